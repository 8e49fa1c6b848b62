"""The evaluation page in a real browser: compare two tiny models from the page, watch the run finish, read
the charts, open one prompt's answers and download the report.

It has its own app server (`app_launching_jobs`), whose jobs run single-threaded.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import App, app_launching_jobs, browser_page
from .harness import choose_model, wait_for_app, wait_for_job_end_redraw
from .seed import model_in_workspace

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def eval_app(chromium, tmp_path_factory):
    with app_launching_jobs(tmp_path_factory, "browser-eval") as app:
        yield app


@pytest.fixture
def page(chromium, eval_app):
    with browser_page(chromium) as page:
        yield page


def test_compare_two_models_read_the_charts_and_download_the_report(
    page, eval_app: App, tiny_model_path, second_tiny_model_path
):
    # the browser names model folders inside the workspace only
    tiny_model_path = model_in_workspace(tiny_model_path, eval_app.workspace)
    second_tiny_model_path = model_in_workspace(second_tiny_model_path, eval_app.workspace)
    page.goto(f"{eval_app.url}/Evaluate")
    wait_for_app(page)
    expect(page.get_by_text("No results yet")).to_be_visible()
    choose_model(page, tiny_model_path)
    # an empty judge field means the sidebar's model
    expect(page.locator(".st-key-eval_judge input")).to_have_attribute(
        "placeholder", f"the sidebar's: {tiny_model_path}"
    )

    page.locator(".st-key-eval_more_models textarea").fill(f"base={tiny_model_path}\ntuned={second_tiny_model_path}")
    page.locator(".st-key-eval_more_sets textarea").fill("red-team#limit=4,name=rt")
    page.locator(".st-key-eval_set_limit input").fill("2")  # each built-in set: its first 2 prompts of each label
    page.locator(".st-key-eval_tokens input").fill("4")
    page.locator(".st-key-eval_start button").click()
    started = page.get_by_text(re.compile(r"Started eval-[0-9a-f]+"))
    expect(started).to_be_visible()
    run_id = re.search(r"eval-[0-9a-f]+", started.inner_text()).group()

    card = page.locator(f".st-key-run-{run_id}").first
    expect(card).to_contain_text("done", timeout=180_000)
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(4, timeout=30_000)  # 2 win rates, ratings, refusals
    expect(page.locator("[data-testid='stPlotlyChart'] .main-svg").first).to_be_visible()
    wait_for_job_end_redraw(page, "refresh_evals")

    page.get_by_label("Prompt", exact=True).click()
    page.keyboard.type("rt/red-01")  # the list is long (the benign set comes first): filter it
    page.get_by_role("option").filter(has_text="rt/red-01").first.click()
    expect(page.get_by_text(re.compile(r"^base · (refused|answered)$"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"^tuned · (refused|answered)$"))).to_be_visible()

    with page.expect_download() as download:
        page.get_by_role("button", name="Download the report (one HTML file)").click()
    report = download.value.path().read_text()
    assert report.startswith("<!DOCTYPE html>") and run_id in report and "Refusal rates" in report
    # its settings say what was run: the sets with their limits (the line's own limit stands), the wrappers
    assert "red-team#limit=2, benign#limit=2, red-team#name=rt,limit=4" in report and "<td>wrappers</td>" in report
    # its charts keep plotly's colours, not the placeholder colours of the Streamlit template the app server uses
    assert "#636efa" in report and "#000001" not in report
    # nothing went wrong on the way: no error message, no exception
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)
