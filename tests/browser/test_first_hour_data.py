"""The first hour without the CLI (issue 13), in a real browser: pairs made from one's own traces, a file
uploaded and imported, an export downloaded (group 3); the constitution picked on one page found on the next,
and one list of pages, in the order of the work, in the sidebar and on the home page (group 4).

Each scenario checks what the user sees and one thing that must not happen."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from cai_core.store import Store
from ui.navigation import STEPS

from .conftest import App, browser_page
from .harness import go_to, running_app, settle, wait_for_app
from .seed import DOG_PROMPT, seeded_data

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def data_app(chromium, tmp_path_factory):
    """An app of its own: this scenario adds pairs, which the other scenarios' figures must not see."""
    root = tmp_path_factory.mktemp("browser-data")
    workspace = seeded_data(root)
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


def test_pairs_from_my_traces_an_uploaded_file_and_an_export_download_without_the_cli(chromium, data_app, tmp_path):
    with browser_page(chromium) as page:
        page.goto(f"{data_app.url}/Data")
        wait_for_app(page)

        page.get_by_role("button", name="Make pairs").click()
        expect(page.get_by_text("2 pairs of first answer and revision, 2 new.")).to_be_visible()

        mine = tmp_path / "mine.jsonl"  # outside the workspace: the upload is how it comes in
        mine.write_text(
            "".join(
                json.dumps({"prompt": f"Q{i}?", "response_a": "yes", "response_b": f"no {i}"}) + "\n" for i in range(3)
            )
        )
        page.get_by_role("tab", name="Import a file").click()
        page.locator(".st-key-import_file_upload").get_by_test_id("stFileUploaderDropzoneInput").set_input_files(mine)
        expect(page.get_by_text("mine.jsonl")).to_be_visible()
        page.get_by_role("button", name="Import").click()
        expect(page.get_by_text("Read 3 pairs from mine.jsonl, 3 new; skipped 0 bad lines.")).to_be_visible()

        page.get_by_role("tab", name="Export").click()
        expect(page.get_by_text("2 rows match.")).to_be_visible()
        with page.expect_download() as download:
            page.get_by_role("button", name="Download").click()
        assert download.value.suggested_filename == "sft.jsonl"
        rows = [json.loads(line) for line in download.value.path().read_text().splitlines()]
        assert DOG_PROMPT in [row["messages"][0]["content"] for row in rows] and len(rows) == 2

        with Store.open(data_app.workspace) as store:
            assert {source: len(store.pairs(source=source)) for source in ("sl-cai", "import")} == {
                "sl-cai": 2,
                "import": 3,
            }
        # what must not happen: a page that sends its user to the command line
        expect(page.get_by_test_id("stMain").get_by_text(re.compile(r"`?cai (pairs|export|import)"))).to_have_count(0)


def test_one_list_of_pages_and_the_constitution_carried_from_page_to_page(page, app):
    page.goto(app.url)
    wait_for_app(page)
    sidebar = page.get_by_test_id("stSidebar")
    labels = ["Home", *(step.label for step in STEPS)]
    expect(sidebar.get_by_role("link")).to_have_count(len(labels))
    for link, label in zip(sidebar.get_by_role("link").all(), labels, strict=True):
        expect(link).to_contain_text(label)
    cards = [link.get_attribute("href") for link in page.get_by_test_id("stMain").get_by_role("link").all()]
    assert (
        [href for href in cards if not href.startswith("#")]
        == [  # not the headings' anchors
            link.get_attribute("href") for link in sidebar.get_by_role("link").all()[1:]
        ]
    )

    go_to(page, "Constitution")
    page.get_by_label("Constitution file").click()
    page.get_by_role("option", name="hhh.yaml").click()
    settle(page)
    go_to(page, "Generate")
    expect(page).to_have_url(f"{app.url}/Generate")  # the pages keep their addresses
    expect(page.get_by_role("combobox", name="Constitution", exact=True)).to_have_value("hhh.yaml")
    # what must not happen: the home page listed as "app", or Streamlit's own list beside ours
    expect(sidebar.get_by_role("link", name="app", exact=True)).to_have_count(0)
    expect(page.get_by_test_id("stSidebarNav")).to_have_count(0)
