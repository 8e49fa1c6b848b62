"""Issue 27 item 4 in a real browser: an upload and a "Write to exports/" go into the data folder even where a
symbolic link to a file outside it was planted, and "Add a set" refuses `hf:text` (a `datasets` builder that would
read the server's own folder) instead of reading it.

Each scenario checks what the user sees and one thing that must not happen."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from .conftest import App, browser_page
from .harness import running_app, wait_for_app
from .seed import seeded_data

pytestmark = pytest.mark.browser

VICTIM = "the server's own file, which the app must not touch\n"


@pytest.fixture(scope="module")
def linked_app(chromium, tmp_path_factory):
    """An app of its own: its data folder gets links planted in it."""
    root = tmp_path_factory.mktemp("browser-links")
    workspace = seeded_data(root)
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "outside" / "victim.jsonl"
    path.parent.mkdir()
    path.write_text(VICTIM)
    return path


def plant_link(link, target) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def test_an_upload_lands_in_uploads_not_through_a_link_planted_there(chromium, linked_app, victim, tmp_path):
    planted = linked_app.workspace.root / "uploads" / "mine.jsonl"
    plant_link(planted, victim)
    mine = tmp_path / "mine.jsonl"
    mine.write_text(
        "".join(json.dumps({"prompt": f"Q{i}?", "response_a": "yes", "response_b": "no"}) + "\n" for i in range(3))
    )
    with browser_page(chromium) as page:
        page.goto(f"{linked_app.url}/Data")
        wait_for_app(page)
        page.get_by_role("tab", name="Import a file").click()
        page.locator(".st-key-import_file_upload").get_by_test_id("stFileUploaderDropzoneInput").set_input_files(mine)
        expect(page.get_by_text("mine.jsonl")).to_be_visible()
        page.get_by_role("button", name="Import").click()
        expect(page.get_by_text("Read 3 pairs from mine.jsonl, 3 new; skipped 0 bad lines.")).to_be_visible()
    assert victim.read_text() == VICTIM
    assert not planted.is_symlink() and planted.read_text() == mine.read_text()


def test_write_to_exports_replaces_a_link_planted_there_and_leaves_its_target(chromium, linked_app, victim):
    planted = linked_app.workspace.root / "exports" / "sft.jsonl"
    plant_link(planted, victim)
    with browser_page(chromium) as page:
        page.goto(f"{linked_app.url}/Data")
        wait_for_app(page)
        page.get_by_role("tab", name="Export").click()
        expect(page.get_by_text("2 rows match.")).to_be_visible()
        page.get_by_role("button", name="Write to").click()
        expect(page.get_by_text("Wrote 2 sft rows to")).to_be_visible()
    assert victim.read_text() == VICTIM
    assert not planted.is_symlink() and len(planted.read_text().splitlines()) == 2


def test_add_a_set_refuses_a_datasets_builder_and_reads_nothing(chromium, linked_app):
    with browser_page(chromium) as page:
        page.goto(f"{linked_app.url}/Evaluate")
        wait_for_app(page)
        page.get_by_text("Add a set from a file, mapping its columns").click()
        field = page.locator(".st-key-set_source input")
        field.fill("hf:text")
        field.press("Enter")
        expect(page.get_by_text("hf:text: from the browser, hf: names a hub dataset as OWNER/NAME")).to_be_visible()
        expect(page.get_by_text("a `datasets` builder that reads the server's own files")).to_be_visible()
        # what must not happen: the project's own files offered as a set's columns
        expect(page.locator(".st-key-set_prompt")).to_have_count(0)
