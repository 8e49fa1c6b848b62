"""`cai app --host 0.0.0.0` in a real browser: every page asks for a login and shows nothing else before it.

It runs the real command (not `streamlit run`), with the operator's token in `$CAI_APP_TOKEN`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from cai_core.workspace import PROJECT_ROOT

from .harness import free_port, wait_for_app
from .seed import DOG_PROMPT, seeded_data

pytestmark = pytest.mark.browser

TOKEN = "browser-test-token-3f9c1a"


@pytest.fixture(scope="module")
def exposed_app(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-login")
    workspace = seeded_data(root)
    port = free_port()
    env = {
        **os.environ,
        "CAI_DATA_DIR": str(workspace.root),
        "CAI_CONSTITUTIONS_DIR": str(root / "constitutions"),
        "CAI_APP_TOKEN": TOKEN,
    }
    env.pop("CAI_DB", None)
    command = [sys.executable, "-m", "cai_core.cli", "app", "--host", "0.0.0.0", "--port", str(port)]
    with open(root / "app.log", "wb") as log:
        app = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                assert app.poll() is None and time.monotonic() < deadline, (root / "app.log").read_text()
                time.sleep(0.2)
        yield url
    finally:
        app.send_signal(signal.SIGTERM)  # `cai app` stops its server with it
        app.wait(timeout=20)


def test_every_page_asks_for_a_login_and_shows_nothing_else(page, exposed_app):
    for path in ("", "Traces", "Annotate"):
        page.goto(f"{exposed_app}/{path}")
        wait_for_app(page)
        main = page.get_by_test_id("stMain")
        expect(main.get_by_role("heading", level=1)).to_have_text("Log in")
        expect(page.get_by_label("Password or token")).to_be_visible()
        expect(page.get_by_test_id("stSidebar").get_by_label("Data folder")).to_have_count(0)
        expect(page.get_by_test_id("stMetric")).to_have_count(0)
        expect(page.get_by_text(DOG_PROMPT)).to_have_count(0)

    page.get_by_label("Password or token").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Wrong name, password or token.")).to_be_visible()
    expect(page.get_by_test_id("stMetric")).to_have_count(0)

    page.get_by_label("Password or token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Annotate")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text("Logged in as operator")).to_be_visible()


def test_the_token_in_the_url_logs_in_and_leaves_the_address_bar(page, exposed_app):
    page.goto(f"{exposed_app}/?token={TOKEN}")
    wait_for_app(page)
    expect(page.get_by_role("heading", name="Constitutional AI workbench")).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Traces")).to_contain_text("2")
    assert "token" not in page.url
