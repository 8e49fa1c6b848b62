"""Issue 25 item 4: the app looks finished. Streamlit shows a "Deploy" button and a developer menu to a visitor on
localhost unless `client.toolbarMode` says otherwise; each page names itself in the browser's tab."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from ui.navigation import STEPS

from .harness import wait_for_app

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(("path", "label"), [("", "Home"), ("Generate", "Generate"), ("Evaluate", "Evaluate")])
def test_a_page_names_itself_in_the_tab_and_offers_no_deploy_button(page, app, path, label):
    assert label == "Home" or label in {step.label for step in STEPS}
    page.goto(f"{app.url}/{path}")
    wait_for_app(page)
    expect(page).to_have_title(f"{label} · CAI workbench")
    # what must not happen: Streamlit's own Deploy button or its developer menu in the toolbar
    expect(page.get_by_test_id("stHeader")).to_be_attached()
    expect(page.get_by_test_id("stAppDeployButton")).to_have_count(0)
    expect(page.get_by_test_id("stMainMenu")).to_have_count(0)
