"""A constitution A/B launched from the Constitution page's history, in a real browser, on the tiny model.

It has its own app server (`app_launching_jobs`), whose jobs run single-threaded.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cai_core.constitution import load_constitution, save_constitution
from cai_core.store import Store

from .conftest import App, app_launching_jobs, browser_page
from .harness import choose_model, settle, wait_for_app
from .seed import model_in_workspace

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def ab_app(chromium, tmp_path_factory):
    with app_launching_jobs(tmp_path_factory, "browser-ab") as app:
        yield app


@pytest.fixture
def page(chromium, ab_app):
    with browser_page(chromium) as page:
        yield page


def test_an_ab_launched_from_the_history_shows_its_paired_result(page, ab_app: App, tiny_model_path):
    # two saved versions of the red-team constitution: as shipped, then with one principle switched off
    path = ab_app.constitutions / "red_team.yaml"
    shipped = load_constitution(path)
    principles = [p.model_copy(update={"enabled": i != 0}) for i, p in enumerate(shipped.principles)]
    edited = shipped.model_copy(update={"principles": principles})
    with Store.open(ab_app.workspace) as store:
        for c, note in ((shipped, "as shipped"), (edited, "without the first principle")):
            save_constitution(c, path)
            store.record_constitution(c, path, note)

    tiny_model_path = model_in_workspace(tiny_model_path, ab_app.workspace)
    page.goto(f"{ab_app.url}/Constitution")
    wait_for_app(page)
    choose_model(page, tiny_model_path)
    page.get_by_label("Constitution file").click()
    page.get_by_role("option", name="red_team.yaml").click()
    settle(page)
    page.get_by_role("tab", name="History").click()
    expect(page.get_by_text("Compare these two versions on prompts (A/B)")).to_be_visible()
    limit = page.get_by_label("Prompts per set", exact=True)
    limit.fill("1")
    limit.press("Enter")
    settle(page)
    page.get_by_role("button", name="Compare on prompts").click()
    started = page.get_by_text(re.compile(r"Started the A/B ab-[0-9a-f]+"))
    expect(started).to_be_visible()
    run_id = re.search(r"ab-[0-9a-f]+", started.inner_text()).group()

    # the job is a separate process: the panel follows it, then the page shows the paired figures
    expect(page.get_by_text("Paired win rates")).to_be_visible(timeout=240_000)
    expect(page.get_by_text(f"{run_id} · ab")).to_be_visible()
    # win rates, per principle, per category, over-refusal
    expect(page.locator(".st-key-ab_figures [data-testid=stDataFrame]")).to_have_count(4)
    expect(page.get_by_text("Over-refusal on the benign prompts")).to_be_visible()
    expect(page.get_by_text("Constitution A", exact=True)).to_be_visible()
    expect(page.get_by_text("Constitution B", exact=True)).to_be_visible()
    expect(page.get_by_text(f"A: {shipped.name} · version {shipped.version}")).to_be_visible()
    assert page.get_by_test_id("stException").count() == 0
