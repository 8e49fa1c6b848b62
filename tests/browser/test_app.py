"""The app in a real browser: `streamlit run` on a free port, driven by Debian's Chromium through Playwright.

Each scenario checks one thing the user sees and one thing that must not happen.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from playwright.sync_api import expect

from cai_core.constitution import load_constitution
from cai_core.jobs import list_job_folders
from cai_core.store import Store, TraceFilter

from .harness import choose_model, go_to, type_into, wait_for_app, wait_for_job_end_redraw
from .seed import DOG_ROUNDS, FOUR_ROUNDS, HOSTILE, IMAGE, SCRIPT, model_in_workspace

pytestmark = pytest.mark.browser


def open_page(page, app, path: str = "") -> None:
    page.goto(f"{app.url}/{path}")
    wait_for_app(page)


def open_principle(page, index: int):
    principle = page.locator(f".st-key-principle-{index}")
    principle.locator("summary").click()
    return principle


def history_size(app, path) -> int:
    with Store.open(app.workspace) as store:  # the app opens the database per run only, so this waits at most briefly
        return len(store.constitution_history(path))


def test_edit_a_principle_save_and_reload(page, app):
    path = app.constitutions / "customer_service.yaml"
    before = load_constitution(path)
    open_page(page, app, "Constitution")
    type_into(open_principle(page, 0).get_by_label("Name", exact=True), "Accurate about every policy")
    expect(page.get_by_text("Unsaved changes")).to_be_visible()
    type_into(page.get_by_label("Note for this version (optional)"), "say every")
    page.locator(".st-key-save button").click()
    expect(page.get_by_text("Saved customer_service.yaml as version")).to_be_visible()

    page.reload()
    wait_for_app(page)
    expect(page.locator(".st-key-principle-0 summary")).to_contain_text("1. Accurate about every policy")
    after = load_constitution(path)
    assert after.principles[0].name == "Accurate about every policy"
    assert after.principles[0].critique_request == before.principles[0].critique_request
    assert after.principles[1:] == before.principles[1:]  # nothing else changed


def test_invalid_edit_shows_error_and_leaves_the_file(page, app):
    path = app.constitutions / "customer_service.yaml"
    before, saves = path.read_bytes(), history_size(app, path)
    open_page(page, app, "Constitution")
    type_into(open_principle(page, 1).get_by_label("Id", exact=True), "Not A Slug")
    error = page.get_by_test_id("stAlertContentError")
    expect(error).to_contain_text("This draft is not valid")
    expect(error).to_contain_text("principle 2 ('Not A Slug'), field 'id'")
    page.locator(".st-key-save button").click()
    expect(page.get_by_text("Not saved, the file is unchanged")).to_be_visible()
    assert path.read_bytes() == before
    assert history_size(app, path) == saves


def search_traces(page, app, words: str) -> None:
    open_page(page, app, "Traces")
    type_into(page.get_by_role("textbox", name="Search"), words)
    expect(page.get_by_text("1 trace match")).to_be_visible()


def test_step_through_four_rounds_and_record_a_verdict(page, app):
    search_traces(page, app, "barks all night")
    expect(page.get_by_text(f"Trace {FOUR_ROUNDS}")).to_be_visible()
    for label in ["Answer", *(f"{stage} {n}" for n in range(1, 5) for stage in ("Critique", "Revision"))]:
        page.locator(".st-key-step_next button").click()
        expect(page.get_by_role("radio", name=label, exact=True)).to_be_checked()
    expect(page.locator(".word-diff ins")).to_contain_text("Earplugs help meanwhile")
    expect(page.locator(".st-key-step_next button")).to_be_disabled()

    type_into(page.get_by_label("Your name"), "grace")
    page.get_by_text("better", exact=True).click()
    page.get_by_text("valid", exact=True).click()
    page.get_by_label("Note").fill("Adds a useful tip.")
    page.get_by_role("button", name="Save verdict").click()
    expect(page.get_by_text("Saved your verdict on round 4.")).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Revision: better")).to_contain_text("1")

    with Store.open(app.workspace) as store:
        mine = [v for v in store.verdicts() if v.annotator == "grace"]
    assert [(v.trace_id, v.round, v.revision_verdict, v.critique_verdict, v.note) for v in mine] == [
        (FOUR_ROUNDS, 4, "better", "valid", "Adds a useful tip.")
    ]  # one verdict, on the round shown, and no other
    with page.expect_download() as download:
        page.get_by_role("button", name="Download verdicts (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert {"trace_id": FOUR_ROUNDS, "round": "4", "annotator": "grace"}.items() <= rows[-1].items()


def test_a_rewrite_shows_beside_its_answer_and_an_edit_as_a_word_diff(page, app):
    search_traces(page, app, "barks all night")
    page.get_by_text("Revision 1", exact=True).click()  # rewrites the answer: a word diff of it would be noise
    expect(page.get_by_text("beside the answer before it (they share little)")).to_be_visible()
    expect(page.get_by_test_id("stMain").get_by_text(DOG_ROUNDS[1][2])).to_be_visible()
    expect(page.locator(".word-diff")).to_have_count(0)
    page.get_by_text("Revision 4", exact=True).click()  # an edit of the revision before it
    expect(page.locator(".word-diff ins")).to_contain_text("Earplugs help meanwhile")
    expect(page.get_by_text("they share little")).to_have_count(0)


def test_hostile_trace_is_shown_literally_and_runs_nothing(page, app):
    remote = []
    page.on("request", lambda request: remote.append(request.url) if "127.0.0.1:9/" in request.url else None)
    search_traces(page, app, "onerror")
    expect(page.get_by_text(f"Trace {HOSTILE}")).to_be_visible()
    expect(page.get_by_test_id("stCode").first).to_contain_text(f"{SCRIPT} Tell me about {IMAGE}")
    page.get_by_text("Revision 1", exact=True).click()  # jump straight to a step
    expect(page.get_by_role("radio", name="Revision 1", exact=True)).to_be_checked()
    expect(page.locator(".word-diff")).to_contain_text(IMAGE)
    expect(page.locator(".word-diff del").filter(has_text=SCRIPT)).to_have_count(1)
    page.get_by_label("Open trace").click()  # the list of traces shows the prompt as text too
    expect(page.get_by_role("option").first).to_contain_text(SCRIPT)

    assert page.evaluate("() => window.__xss") is None
    assert page.locator("[data-testid='stMain'] img, [data-testid='stMain'] script").count() == 0
    assert remote == []


def test_launch_a_small_job_and_watch_its_traces_appear(page, app, tiny_model_path):
    # the browser names files inside the workspace only
    tiny_model_path = model_in_workspace(tiny_model_path, app.workspace)
    prompts = app.workspace.root / "two.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"Browser question {i}?"}) + "\n" for i in (1, 2)))
    runs_before = {job.run_id for job in list_job_folders(app.workspace.runs_dir)}
    open_page(page, app)  # the model is set once, on any page, and every page uses it
    choose_model(page, tiny_model_path)
    go_to(page, "Generate")
    expect(page.get_by_label("Model (set in the sidebar)")).to_have_value(tiny_model_path)
    page.get_by_label("Prompt file", exact=True).fill(str(prompts))
    page.get_by_label("Rounds", exact=True).fill("1")
    page.get_by_label("Max new tokens", exact=True).fill("4")
    page.get_by_role("button", name="Start in the background").click()
    started = page.get_by_text(re.compile(r"Started gen-[0-9a-f]+"))
    expect(started).to_be_visible()
    run_id = re.search(r"gen-[0-9a-f]+", started.inner_text()).group()

    # the page refreshes itself while the run is active; the job is a separate process that loads torch first
    # (.first: when the run ends the page redraws itself whole, and the old card lingers for a moment)
    card = page.locator(f".st-key-run-{run_id}").first
    expect(card).to_contain_text("2 traces stored", timeout=90_000)
    expect(card).to_contain_text("done", timeout=30_000)
    wait_for_job_end_redraw(page, "refresh_runs")
    page.locator(f".st-key-run-{run_id}").get_by_role("button", name="Open its traces").click()
    expect(page.get_by_text("2 traces match")).to_be_visible()
    expect(page.get_by_role("heading", name="Traces")).to_be_visible()

    assert page.get_by_test_id("stException").count() == 0
    new_runs = {job.run_id for job in list_job_folders(app.workspace.runs_dir)} - runs_before
    assert new_runs == {run_id}  # started once
    with Store.open(app.workspace) as store:
        assert store.count_traces(TraceFilter(run_id=run_id)) == 2
