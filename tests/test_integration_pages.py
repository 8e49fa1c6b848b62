"""Issue 25's integrations on the pages, under AppTest: the Data page's export and the Train page's finished model
go to a loopback stand-in of the Hub (never the real one), private unless ticked, with their cards; without the
operator's Hub settings the box says how to turn it on and sends nothing; the Recipe page picks the recipe's
tracker."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from cai_core.jobs import JobFolder
from cai_core.workspace import Workspace

from .app_pages import open_page
from .browser.seed import SEED_RUN
from .hub_server import StandInHub
from .test_pages import texts

DATA = "pages/9_Data.py"
TRAIN = "pages/4_Train.py"


@pytest.fixture
def hub(monkeypatch):
    """The operator's Hub settings, as the environment `cai app` starts from gives them: online, a token and the
    stand-in's address."""
    from huggingface_hub import constants

    with StandInHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_operator")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server


def pick_pairs_export(at: AppTest) -> None:
    at.selectbox(key="export_kind").set_value("pairs")
    at.selectbox(key="export_run").set_value(SEED_RUN)
    at.number_input(key="export_max_round").set_value(1).run()


def test_the_data_pages_export_is_pushed_privately_with_its_card(ws, hub):
    at = open_page(DATA)
    pick_pairs_export(at)
    at.text_input(key="export_hub_repo").set_value("me/cai-pairs").run()
    assert hub.requests == []  # nothing reaches the Hub before the button
    at.button(key="export_hub_push").click().run()
    assert not at.exception and not at.error, texts(at.error)

    assert hub.repos == {"dataset/me/cai-pairs": {"visibility": "private"}}
    files = hub.files["dataset/me/cai-pairs"]
    rows = [json.loads(line) for line in files["pairs.jsonl"].decode().splitlines()]
    assert len(rows) == 2 and (ws.exports_dir / "pairs.jsonl").read_bytes() == files["pairs.jsonl"]
    assert f"Constitution: {rows[0]['constitution_version']}" in files["README.md"].decode()
    assert "Pushed to me/cai-pairs (private)" in texts(at.success)
    assert all(headers.get("authorization") == "Bearer hf_operator" for _, _, headers in hub.requests)


def test_without_the_operators_hub_settings_the_box_says_how_and_sends_nothing(ws, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_operator")  # a token, but the workbench is offline (HF_HUB_OFFLINE=1)
    with StandInHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        at = open_page(DATA)
        pick_pairs_export(at)
        assert "set HF_HUB_OFFLINE=0" in texts(at.caption)
        assert "export_hub_push" not in [button.key for button in at.button]
        assert hub.requests == [] and not (ws.exports_dir / "pairs.jsonl").exists()


def test_a_finished_runs_model_is_pushed_from_the_train_page(ws, hub, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    constitution = {"name": "harmless", "version": "v7"}
    spec = {"kind": "train-sft", "model": "default", "config": {}, "constitution": constitution}
    job = JobFolder.create(ws.runs_dir, "sft-done", spec)
    (job.path / "final").mkdir()
    (job.path / "final" / "config.json").write_text("{}")
    job.set_progress("done", 2, 2)
    at = open_page(TRAIN)
    at.text_input(key="train_hub-sft-done_repo").set_value("me/cai-sft").run()
    at.button(key="train_hub-sft-done_push").click().run()
    assert not at.exception and not at.error, texts(at.error)

    assert hub.repos == {"model/me/cai-sft": {"visibility": "private"}}
    files = hub.files["model/me/cai-sft"]
    assert files["config.json"] == b"{}" and "Constitution: harmless v7" in files["README.md"].decode()
    assert "Pushed to me/cai-sft (private)" in texts(at.success)


def test_the_recipe_page_starts_a_recipe_with_the_tracker_picked_there(tmp_path, monkeypatch):
    from .test_recipe import tiny_recipe

    ws = Workspace(tmp_path / "data")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    config = tiny_recipe("default", stop_after="sft", name="tiny")
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)), encoding="utf-8")
    monkeypatch.setenv("CAI_DATA_DIR", str(ws.root))
    monkeypatch.setenv("CAI_RECIPES_DIR", str(recipes))
    launched = []
    monkeypatch.setattr("ui.job_controls.launch_job", lambda job, start: launched.append(job) or True)
    at = open_page("pages/8_Recipe.py")
    assert at.selectbox(key="recipe_tracker").value == "workspace"  # the file's
    at.selectbox(key="recipe_tracker").set_value("tensorboard").run()
    at.button(key="recipe_start").click().run()
    assert not at.exception and not at.error, texts(at.error)

    [job] = launched
    assert job.run_id == config.recipe_id and job.spec["config"]["tracker"] == "tensorboard"
