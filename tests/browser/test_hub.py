"""The Data page's Hub box in a real browser, against a loopback stand-in of the Hub's HTTP API: the operator turned
the Hub on where the app started (HF_HUB_OFFLINE=0, a token, HF_ENDPOINT); the user names a repository and pushes the
export, which lands private with its card. The browser itself reaches nothing outside this machine, and never sees
the token."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from ..hub_server import StandInHub
from .conftest import browser_page
from .harness import running_app, wait_for_app
from .seed import seeded_data

pytestmark = pytest.mark.browser

TOKEN = "hf_operator_secret"


def test_an_export_is_pushed_to_the_hub_from_the_data_page(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-hub")
    workspace = seeded_data(root)
    with StandInHub() as hub, pytest.MonkeyPatch.context() as mp:
        for name, value in {"HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url}.items():
            mp.setenv(name, value)
        app = running_app(workspace.root, root / "constitutions", root / "streamlit.log")
        with app as url, browser_page(chromium) as page:
            page.goto(f"{url}/Data")
            wait_for_app(page)
            page.get_by_role("tab", name="Export").click()
            expect(page.get_by_text("2 rows match.")).to_be_visible()
            page.get_by_text("Push the sft export to the Hugging Face Hub").click()
            repo = page.locator(".st-key-export_hub_repo input")
            repo.fill("me/cai-sft")
            repo.press("Enter")
            page.locator(".st-key-export_hub_push button").click()
            expect(page.get_by_text("Pushed to me/cai-sft (private)")).to_be_visible()

            expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
            assert TOKEN not in page.content()
    assert hub.repos == {"dataset/me/cai-sft": {"visibility": "private"}}
    files = hub.files["dataset/me/cai-sft"]
    rows = [json.loads(line) for line in files["sft.jsonl"].decode().splitlines()]
    assert len(rows) == 2 and f"Constitution: {rows[0]['constitution_version']}" in files["README.md"].decode()
