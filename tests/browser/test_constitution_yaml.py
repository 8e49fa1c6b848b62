"""The constitution file stays its author's (issue 13, item 5), in a real browser: a one-field edit saved from the
Constitution page is a one-field diff of the file, with its comments, folded blocks, flow lists and blank lines
kept, and nothing else in the folder changes.

It has its own app server, so that the author's file it adds is in no other scenario's list of constitutions.
"""

from __future__ import annotations

import difflib
import re

import pytest
from playwright.sync_api import expect

from cai_core.constitution import load_constitution
from cai_core.workspace import PROJECT_ROOT

from .conftest import App
from .harness import running_app, settle, wait_for_app
from .seed import seeded_data
from .test_app import open_principle, type_into

pytestmark = pytest.mark.browser

AUTHORS_FILE = "our-support.yaml"
SHIPPED = PROJECT_ROOT / "constitutions" / "customer_service.yaml"


def authored_copy() -> str:
    """The shipped customer-service constitution (folded blocks, flow lists, blank lines between principles) with
    the comments an author adds."""
    text = "# Our support team's rules. Keep each request short.\n" + SHIPPED.read_text(encoding="utf-8")
    text = text.replace("  - id: courtesy-empathy\n", "  - id: courtesy-empathy  # the one customers notice\n", 1)
    assert text.count("#") == 2 and ": >-\n" in text and "tags: [" in text and "\n\n  - id:" in text
    return text


@pytest.fixture(scope="module")
def authors_app(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-constitution-yaml")
    workspace = seeded_data(root, hostile=False)
    (root / "constitutions" / AUTHORS_FILE).write_text(authored_copy(), encoding="utf-8")
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


def shown_version(page, file_name: str) -> str:
    """The version the page says the file holds, once the run under way has ended: until then the caption drawn by
    the run before it (the version before a save) may still be on the page."""
    settle(page)
    saved = page.get_by_text(re.compile(rf"^Saved: {re.escape(file_name)} holds this draft, version \w+\.$"))
    expect(saved).to_be_visible()
    return saved.inner_text().rstrip(".").rsplit(" ", 1)[-1]


def test_a_one_field_edit_saved_from_the_browser_is_a_one_field_diff(page, authors_app):
    folder = authors_app.constitutions
    path = folder / AUTHORS_FILE
    original = path.read_text(encoding="utf-8")
    others = {p.name: p.read_bytes() for p in folder.iterdir() if p != path}
    page.goto(f"{authors_app.url}/Constitution")
    wait_for_app(page)
    page.locator(".st-key-con_file input").click()
    page.get_by_role("option", name=AUTHORS_FILE, exact=True).click()
    settle(page)
    version_before = shown_version(page, AUTHORS_FILE)
    assert version_before == load_constitution(path).version

    type_into(open_principle(page, 1).get_by_label("Name", exact=True), "Polite, warm and empathetic")
    expect(page.get_by_text("Unsaved changes")).to_be_visible()
    page.locator(".st-key-save button").click()
    expect(page.get_by_text(f"Saved {AUTHORS_FILE} as version")).to_be_visible()

    saved = path.read_text(encoding="utf-8")
    changed = [
        line
        for line in difflib.unified_diff(original.splitlines(), saved.splitlines(), lineterm="", n=0)
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    ]
    assert changed == ["-    name: Polite and empathetic", "+    name: Polite, warm and empathetic"]
    version_after = shown_version(page, AUTHORS_FILE)
    assert version_after != version_before and version_after == load_constitution(path).version
    # nothing else in the folder changed, and the atomic write left no temporary file behind
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p != path} == others
    expect(page.get_by_test_id("stException")).to_have_count(0)
