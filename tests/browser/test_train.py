"""The training page in a real browser: launch a tiny SFT run and watch it finish with its curves drawn; the
training chain offers a registered reward model from a list, starts PPO from the latest SFT model, and never
offers a reward model as every page's model.

Each scenario has its own app server: `app_launching_jobs` (whose jobs run single-threaded) for the launch, and
one on a workspace whose SFT model and reward model were trained before the server started.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from playwright.sync_api import expect

from cai_core.jobs import list_job_folders
from cai_core.tracking import PROJECT, tracking_record
from cai_core.train import train
from cai_core.train.reward import RewardConfig
from cai_core.train.sft import SFTConfig

from .conftest import App, app_launching_jobs, browser_page
from .harness import running_app, settle, wait_for_app, wait_for_job_end_redraw
from .seed import model_in_workspace, seed_pairs, seeded_data

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def train_app(chromium, tmp_path_factory):
    with app_launching_jobs(tmp_path_factory, "browser-train") as app:
        yield app


@pytest.fixture(scope="module")
def trained_app(chromium, tmp_path_factory, tiny_model_path):
    """An app on a workspace with one finished SFT run (on the seeded traces) and one finished reward model
    (on the seeded AI labels), trained here before the server opens the data folder."""
    root = tmp_path_factory.mktemp("browser-train-chain")
    workspace = seeded_data(root)
    seed_pairs(workspace, root / "constitutions" / "hhh.yaml")
    sft = train(SFTConfig(model=tiny_model_path, max_steps=1, batch_size=2), workspace)
    rm = train(RewardConfig(model=tiny_model_path, max_steps=1, batch_size=4), workspace)
    assert sft.progress().status == rm.progress().status == "done"
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions"), sft.run_id, rm.run_id


@pytest.fixture
def train_page(chromium):
    with browser_page(chromium) as page:
        yield page


def test_enter_in_max_steps_keeps_the_value_and_starts_nothing(train_page, train_app, tiny_model_path):
    page = train_page
    page.goto(f"{train_app.url}/Train")
    wait_for_app(page)
    before = [job.run_id for job in list_job_folders(train_app.workspace.runs_dir)]
    page.locator(".st-key-train_sft_model input").fill(model_in_workspace(tiny_model_path, train_app.workspace))
    steps = page.locator(".st-key-train_sft_max_steps input")
    steps.fill("2")
    steps.press("Enter")
    settle(page)
    expect(steps).to_have_value("2")  # the value is taken
    expect(page.get_by_text("Started sft-")).to_have_count(0)  # and no run started: Start alone starts one
    assert [job.run_id for job in list_job_folders(train_app.workspace.runs_dir)] == before
    expect(page.locator(".st-key-train_start button")).to_be_enabled()


def test_launch_a_tiny_run_and_watch_it_finish_with_its_curves(train_page, train_app, tiny_model_path):
    page = train_page
    page.goto(f"{train_app.url}/Train")
    wait_for_app(page)
    expect(page.get_by_text("No training runs yet.")).to_be_visible()
    # the browser names models inside the workspace only
    page.locator(".st-key-train_sft_model input").fill(model_in_workspace(tiny_model_path, train_app.workspace))
    page.locator(".st-key-train_sft_max_steps input").fill("3")
    page.locator(".st-key-train_sft_learning_rate input").fill("1e-3")
    page.locator(".st-key-train_start button").click()
    expect(page.get_by_text("Started sft-")).to_be_visible()

    selected = page.locator(".st-key-train_selected")
    # .first: when the run ends the page redraws itself whole, and the old panel lingers for a moment
    expect(selected.get_by_test_id("stProgress").get_by_text("step 3/3").first).to_be_visible(timeout=120_000)
    # the curves come with the redraw after the run ends: slow on a busy machine
    expect(selected.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=30_000)
    expect(selected.locator(".main-svg").first).to_be_visible(timeout=30_000)  # plotly has drawn the curve
    [job] = [j for j in list_job_folders(train_app.workspace.runs_dir) if j.spec["kind"] == "train-sft"]
    assert job.progress().status == "done"
    expect(selected.get_by_text(str(job.path / "final"), exact=True).first).to_be_visible()
    # the default tracker, trackio, keeps the run in its local database, and the page links to it
    expect(selected.get_by_role("link", name="Open in trackio").first).to_be_visible()
    database = sqlite3.connect(Path(tracking_record(job)["where"]) / f"{PROJECT}.db")
    steps = database.execute("SELECT step FROM metrics WHERE run_name = ? ORDER BY step", (job.run_id,)).fetchall()
    (config,) = database.execute("SELECT config FROM configs WHERE run_name = ?", (job.run_id,)).fetchone()
    assert [step for (step,) in steps][-1] == 3 and json.loads(config)["max_steps"] == 3
    # no error anywhere on the page, neither a message nor an exception
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)

    # the chain goes on from here: PPO starts from this SFT model, and asks for a reward model from a list
    wait_for_job_end_redraw(page, "train_refresh")
    page.locator(".st-key-train_kind").get_by_text("PPO", exact=True).click()
    expect(page.locator(".st-key-train_ppo_model input")).to_have_value(job.run_id, timeout=30_000)
    expect(page.get_by_text("No reward model yet: train one on the RM tab first.")).to_be_visible()
    expect(page.locator(".st-key-train_ppo_reward_model input")).to_have_count(1)  # a select box, not a text box
    expect(page.get_by_text("KL target", exact=True)).to_have_count(1)  # labels in words, in "All settings"
    expect(page.get_by_text("Kl target", exact=True)).to_have_count(0)
    page.locator(".st-key-train_start button").click()
    expect(page.get_by_text("Not started: Reward model: PPO needs a reward")).to_be_visible(timeout=30_000)
    kinds = [j.spec["kind"] for j in list_job_folders(train_app.workspace.runs_dir)]
    assert [k for k in kinds if k.startswith("train-")] == ["train-sft"]  # the refused start recorded nothing


def test_ppo_offers_the_registered_reward_model_and_starts_from_the_latest_sft_model(train_page, trained_app):
    page = train_page
    app, sft_run, rm_run = trained_app
    page.goto(f"{app.url}/Train")
    wait_for_app(page)
    page.locator(".st-key-train_kind").get_by_text("PPO", exact=True).click()
    settle(page)
    expect(page.locator(".st-key-train_ppo_model input")).to_have_value(sft_run)
    expect(page.get_by_text(f"The policy starts from the latest SFT model, run {sft_run}")).to_be_visible()
    reward = page.locator(".st-key-train_ppo_reward_model")
    expect(reward.get_by_role("combobox")).to_have_value(f"reward model {rm_run} · step 1")  # picked by default
    reward.locator("input").click()  # the list opens with the registry's reward models in it
    expect(page.get_by_role("option", name=f"reward model {rm_run} · step 1")).to_have_count(1)
    page.keyboard.press("Escape")
    expect(page.get_by_text("train one on the RM tab first")).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_use_this_model_is_offered_for_the_sft_model_and_never_for_the_reward_model(train_page, trained_app):
    page = train_page
    app, sft_run, rm_run = trained_app
    page.goto(f"{app.url}/Train")
    wait_for_app(page)
    selected = page.locator(".st-key-train_selected")
    for run_id, offered in ((sft_run, 1), (rm_run, 0), (sft_run, 1)):
        page.locator(".st-key-train_run input").click()
        page.get_by_role("option", name=run_id, exact=True).click()
        settle(page)
        # the selected run's panel is drawn (a reward model's folder is shown too: a spec to score with)
        expect(selected.get_by_text(str(app.workspace.runs_dir / run_id / "final"), exact=True)).to_be_visible()
        expect(page.locator(f".st-key-train_use-{run_id}")).to_have_count(offered)
    expect(page.get_by_test_id("stException")).to_have_count(0)
