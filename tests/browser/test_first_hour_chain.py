"""Issue 13's "done when", in a real browser: a new user's first hour, from an empty data folder, by clicks and
typing only. SL-CAI → pairs from those traces → 5 labels by hand → AI labels → SFT → reward model → PPO (the
reward model picked from a list, the policy the SFT model) → evaluation → the HTML report downloaded.

Every long step is a background job whose card must show a rate and end `done`. The ETA shows only while a job
runs: on the default model every step must have shown one; a tiny job can end between two redraws of its card,
so on the tiny model the walk only reports the ETAs it saw (each job's progress records its ETA while it runs:
tests/test_jobs.py).
Every step checks that nothing went wrong on the page: no exception, no error, no `cai ...` command suggested.
The tiny test model plays every part (policy, judge), with the smallest settings the forms allow. With
CAI_FIRST_HOUR_MODEL=default the real default model plays them instead, as a newcomer's sidebar has it: minutes
on a CPU, so `make test` does not; run it by hand to see what the first hour costs.
"""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from cai_core.backends import DEFAULT_MODEL
from cai_core.backends.default_model import FOLDER_NAME
from cai_core.jobs import list_job_folders
from cai_core.store import Store

from .conftest import App, app_launching_jobs, browser_page
from .harness import choose_model, go_to, settle, type_into, wait_for_app, wait_for_job_end_redraw
from .seed import model_in_workspace

pytestmark = pytest.mark.browser

PROMPTS = 6  # SL-CAI traces, so pairs: enough to label 5 by hand
# the card's progress line (`Progress.summary`), "12/12 steps · 2.94 steps/s · 4s elapsed · ...", not a log line
RATE = re.compile(r"^\d+/\d+ \w+ · \d+\.\d\d \w+/s · ")
WALK_MODEL = os.environ.get("CAI_FIRST_HOUR_MODEL", "tiny")  # or "default"
# ms a job may take on a busy 2-core machine, its process start included
JOB_SECONDS = 90_000 if WALK_MODEL == "tiny" else 1_200_000


@pytest.fixture(scope="module")
def empty_app(chromium, tmp_path_factory):
    with app_launching_jobs(tmp_path_factory, "browser-first-hour-chain", seeded=False) as app:
        yield app


@pytest.fixture
def page(chromium, empty_app):
    with browser_page(chromium) as page:
        yield page


def nothing_wrong(page) -> None:
    """What must not happen on any page of the walk: an exception, an error, a command line to type."""
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
    expect(page.get_by_test_id("stMain").get_by_text(re.compile(r"`?cai [a-z]"))).to_have_count(0)


def started_run(page) -> str:
    started = page.get_by_text(re.compile(r"^Started [\w.-]+"))
    expect(started).to_be_visible(timeout=30_000)
    return re.match(r"Started ([\w.-]+?)\.? ", started.inner_text()).group(1)


# In the page: every progress line with an ETA ("6/12 steps · 1.49 steps/s · 4s elapsed · about 4s left") that
# shows, however briefly, so a step's ETA is looked for all the while its job runs.
WATCH_ETAS = """() => {
  window.__etas = [];
  setInterval(() => {
    const line = document.body.innerText.match(/\\d+\\/\\d+ [^\\n]* · about [^\\n]+ left/);
    if (line && window.__etas.at(-1) !== line[0]) window.__etas.push(line[0]);
  }, 100);
}"""


def etas_seen(page) -> list[str]:
    """The ETAs shown since the last call."""
    return page.evaluate("window.__etas.splice(0)")


def wait_until_done(page, card, refresh_key: str) -> None:
    """The job's card ends `done`, showing its rate (a run that fails, fails here with its card's text, the reason
    included); then the page's one redraw at a job's end, before which a click would be lost."""
    ended = card.get_by_text(re.compile(r"^(done|failed|cancelled)$")).first
    expect(ended).to_be_attached(timeout=JOB_SECONDS)
    assert ended.text_content() == "done", card.text_content()
    expect(card.get_by_text(RATE).first).to_be_attached()
    wait_for_job_end_redraw(page, refresh_key)


def test_the_first_hour_from_an_empty_data_folder_without_the_cli(page, empty_app: App, request):
    page.goto(empty_app.url)
    wait_for_app(page)
    if WALK_MODEL == "default":  # the sidebar's own choice; converted once, linked rather than converted again
        model = DEFAULT_MODEL
        empty_app.workspace.models_dir.mkdir(parents=True, exist_ok=True)
        (empty_app.workspace.models_dir / FOLDER_NAME).symlink_to(request.getfixturevalue("default_model_path"))
    else:
        model = model_in_workspace(request.getfixturevalue("tiny_model_path"), empty_app.workspace)
        choose_model(page, model)  # the browser names models inside the workspace
    page.evaluate(WATCH_ETAS)
    etas = {}

    # 1. SL-CAI: a few prompts, one round; the card shows the rate (and the ETA while it runs)
    go_to(page, "Generate")
    expect(page.get_by_text("No runs yet.")).to_be_visible()
    page.locator(".st-key-gen_rounds input").fill("1")
    page.locator(".st-key-gen_limit input").fill(str(PROMPTS))
    page.locator(".st-key-gen_tokens input").fill("8")
    page.locator(".st-key-gen_start button").click()
    generation = started_run(page)
    wait_until_done(page, page.locator(f".st-key-run-{generation}"), "refresh_runs")
    etas["SL-CAI"] = etas_seen(page)
    nothing_wrong(page)

    # 2. pairs from those traces: first answer against revision
    go_to(page, "Data")
    page.get_by_role("button", name="Make pairs").click()
    made = page.get_by_text(re.compile(r"^\d+ pairs of first answer and revision, \d+ new\."))
    expect(made).to_be_visible()
    assert int(made.inner_text().split()[0]) >= 5
    nothing_wrong(page)

    # 3. five labels by hand, with the page's buttons
    go_to(page, "Annotate")
    type_into(page.get_by_label("Your name"), "newcomer")
    for _ in range(5):  # the labelling panel's buttons, as a mouse user clicks them
        shown = page.locator('[data-part="pair-id"]')
        expect(shown).to_have_text(re.compile(r"^Pair \S+$"))  # the panel has drawn its pair
        pair = shown.inner_text().removeprefix("Pair ")
        page.get_by_role("button", name="A is better").click()
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text(f"on pair {pair}.")).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Labelled by you")).to_contain_text("5")
    nothing_wrong(page)

    # 4. AI labels on those pairs, the sidebar's model as the judge
    go_to(page, "Agreement")
    page.locator(".st-key-label_start button").click()
    labelling = started_run(page)
    wait_until_done(page, page.locator(f".st-key-run-{labelling}"), "refresh_label_runs")
    etas["AI labels"] = etas_seen(page)
    nothing_wrong(page)

    # 5. SFT on the revisions, a reward model on the AI labels, PPO against it
    go_to(page, "Train")
    selected = page.locator(".st-key-train_selected")
    trained = {}
    for kind, settings in (
        ("SFT", {"max_steps": "2"}),
        ("RM", {"max_steps": "2"}),
        ("PPO", {"max_steps": "1", "batch_size": "2"}),
    ):
        page.locator(".st-key-train_kind").get_by_text(kind, exact=True).click()
        settle(page)
        if kind == "PPO":
            # the policy starts from the SFT model; the reward model is picked from the registry's list
            expect(page.locator(".st-key-train_ppo_model input")).to_have_value(trained["SFT"])
            page.locator(".st-key-train_ppo_reward_model").get_by_role("combobox").click()
            page.get_by_role("option", name=re.compile(f"^reward model {trained['RM']} · step ")).click()
        for field, value in settings.items():
            page.locator(f".st-key-train_{kind.lower()}_{field} input").fill(value)
        page.locator(".st-key-train_start button").click()
        trained[kind] = started_run(page)
        expect(selected.get_by_text(f"{trained[kind]} · train-", exact=False).first).to_be_visible()
        wait_until_done(page, selected, "train_refresh")
        etas[kind] = etas_seen(page)
        nothing_wrong(page)

    # 6. evaluate the PPO model against the model it came from, then download the report
    go_to(page, "Evaluate")
    expect(page.get_by_text("No results yet")).to_be_visible()
    page.get_by_label("Models", exact=True).click()
    page.get_by_role("option", name=re.compile(f"PPO · {trained['PPO']}")).click()
    page.keyboard.press("Escape")
    page.locator(".st-key-eval_more_models textarea").fill(f"base={model}")
    page.locator(".st-key-eval_set_limit input").fill("1")
    page.locator(".st-key-eval_tokens input").fill("4")
    page.locator(".st-key-eval_start button").click()
    evaluation = started_run(page)
    wait_until_done(page, page.locator(f".st-key-run-{evaluation}"), "refresh_evals")
    etas["evaluation"] = etas_seen(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the report (one HTML file)").click()
    report = download.value.path().read_text()
    assert report.startswith("<!DOCTYPE html>") and evaluation in report and trained["PPO"] in report
    nothing_wrong(page)

    # every run the walk started finished, and the labels it made are stored
    runs = {job.run_id: job.progress().status for job in list_job_folders(empty_app.workspace.runs_dir)}
    assert runs == dict.fromkeys([generation, labelling, *trained.values(), evaluation], "done")
    with Store.open(empty_app.workspace) as store:
        assert len(store.human_labels(annotator="newcomer")) == 5
    print(f"ETAs seen on the {WALK_MODEL} model:", etas)
    if WALK_MODEL == "default":  # jobs of minutes: every one must have shown how long it had left
        assert all(etas.values()), etas
