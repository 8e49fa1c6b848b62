"""Issue 13 in a real browser, as a new user meets it: feedback while "try it" works (item 1), and traces
filtered down to what went wrong (item 6). The Evaluate page's per-set limit (item 7) is walked in
test_evaluate.py, whose run it keeps short.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cai_core.constitution import load_constitution
from cai_core.jobs import JobFolder
from cai_core.records import StepVerdict, Trace, TraceStep, to_row
from cai_core.store import Store

from .conftest import App, app_launching_jobs, browser_page
from .harness import choose_model, settle, wait_for_app
from .seed import FOUR_ROUNDS, model_in_workspace

pytestmark = pytest.mark.browser

UNCHANGED = "flags-run:same:0"
UNCHANGED_PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def hour_app(chromium, tmp_path_factory):
    """An app of its own: this module adds a run and a verdict to its data, which the shared app's tests count."""
    with app_launching_jobs(tmp_path_factory, "browser-first-hour") as app:
        add_flagged_trace(app)
        with Store.open(app.workspace) as store:
            store.ingest(app.workspace.runs_dir)
            store.save_verdict(StepVerdict(FOUR_ROUNDS, 2, "ada", "worse", None, "dropped the advice"))
        yield app


def add_flagged_trace(app: App) -> None:
    """A run whose one trace's revision is its answer, word for word: flagged `unchanged`."""
    constitution = load_constitution(app.constitutions / "hhh.yaml")
    job = JobFolder.create(
        app.workspace.runs_dir,
        "flags-run",
        {"kind": "generate", "model": "m", "config": {"max_new_tokens": 64}, "constitution": constitution.snapshot()},
    )
    trace = Trace(UNCHANGED, "flags-run", "same", UNCHANGED_PROMPT, "", 0, "m", constitution.name, constitution.version)
    answer = "Paris is the capital of France."
    steps = [
        TraceStep(UNCHANGED, 0, None, None, answer, 10, 0, 8, 0.1),
        TraceStep(UNCHANGED, 1, "honesty", "The answer is accurate and short.", answer, 40, 8, 8, 0.2),
    ]
    job.append("traces", [to_row(trace)])
    job.append("trace_steps", [to_row(step) for step in steps])
    job.set_progress("done", 2, 2)


@pytest.fixture
def page(chromium, hour_app):
    with browser_page(chromium) as page:
        yield page


def choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def test_try_it_shows_elapsed_time_and_the_words_as_they_come(page, hour_app: App, tiny_model_path):
    model = model_in_workspace(tiny_model_path, hour_app.workspace)
    page.goto(f"{hour_app.url}/Constitution")
    wait_for_app(page)
    choose_model(page, model)
    page.get_by_role("tab", name="Try it").click()
    page.locator(".st-key-try_tokens input").fill("512")  # long enough to watch it being written
    page.locator(".st-key-try_tokens input").press("Enter")
    settle(page)
    page.locator(".st-key-try_run button").click()

    # while it works: a spinner that counts the seconds, the engine and model, and each part as it grows
    spinner = page.get_by_test_id("stSpinner")
    expect(spinner.first).to_contain_text(re.compile(r"\(\d+(\.\d)? ?s(econds?)?\)"), timeout=30_000)
    expect(page.get_by_text(re.compile(r"^Running on hf · .*"))).to_be_visible(timeout=30_000)
    expect(page.get_by_text(re.compile(r"(Answer|Critique|Revision) \(writing…\)")).first).to_be_visible()

    # at the end: the three parts, no spinner left, no error
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=180_000)
    panel = page.get_by_role("tabpanel", name="Try it")
    for heading in ("Answer", "Revision", "What the revision changed"):
        expect(panel.get_by_text(heading, exact=True)).to_be_visible()
    expect(panel.get_by_text(re.compile(r"Critique \(\S+\)"))).to_be_visible()
    expect(spinner).to_have_count(0)
    expect(panel.get_by_text("(writing…)", exact=False)).to_have_count(0)
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)


def test_traces_filtered_by_flag_and_by_verdict(page, hour_app: App):
    page.goto(f"{hour_app.url}/Traces")
    wait_for_app(page)
    expect(page.get_by_text("3 traces match.", exact=False)).to_be_visible()

    page.get_by_label("Flagged", exact=True).click()
    page.get_by_role("option", name="unchanged", exact=True).click()
    page.keyboard.press("Escape")
    settle(page)
    expect(page.get_by_text("1 trace match", exact=False)).to_be_visible()
    expect(page.get_by_test_id("stDataFrame").first).to_contain_text(UNCHANGED_PROMPT)
    page.get_by_role("radio", name="Revision 1", exact=True).click(force=True)
    settle(page)
    expect(page.get_by_text("Flagged: unchanged")).to_be_visible()

    # a flag no trace has: nothing matches, and the page says so instead of failing
    page.get_by_label("Flagged", exact=True).click()
    page.get_by_role("option", name="empty", exact=True).click()
    page.keyboard.press("Escape")
    settle(page)
    expect(page.get_by_text("1 trace match", exact=False)).to_be_visible()  # unchanged OR empty

    page.locator(".st-key-filter_flags [aria-label='Clear all']").first.click()
    settle(page)
    choose(page, "Verdict", "revision worse")
    expect(page.get_by_text("1 trace match", exact=False)).to_be_visible()
    expect(page.get_by_text(f"Trace {FOUR_ROUNDS}", exact=False)).to_be_visible()
    choose(page, "Verdict", "critique invalid")
    expect(page.get_by_text("No traces match", exact=False)).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
