"""The Recipe page under AppTest: a tiny recipe started from the page runs in the background, its stages advance in
the table, and a finished stage links to its page."""

from __future__ import annotations

import dataclasses
import time

import pytest
import yaml

from cai_core.jobs import JobFolder
from cai_core.recipe import stage_table
from cai_core.workspace import Workspace

from .app_pages import open_page
from .test_recipe import tiny_recipe


@pytest.mark.processes
def test_a_recipe_started_from_the_page_advances_and_links_its_stages(tmp_path, monkeypatch, tiny_model_path):
    ws = Workspace(tmp_path / "data")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    config = tiny_recipe(tiny_model_path, stop_after="sft", arms=["cai"], name="tiny")
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)), encoding="utf-8")
    monkeypatch.setenv("CAI_DATA_DIR", str(ws.root))
    monkeypatch.setenv("CAI_RECIPES_DIR", str(recipes))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    at = open_page("pages/8_Recipe.py")
    assert at.selectbox(key="recipe_file").value == "tiny.yaml"
    assert "Not started yet." in [i.value for i in at.info]
    at.button(key="recipe_start").click().run()
    assert not at.exception, at.exception
    job = JobFolder(ws.runs_dir / config.recipe_id)
    deadline = time.time() + 300
    seen = set()
    while time.time() < deadline and job.progress().status in ("pending", "running"):
        seen |= {row["step"] for row in stage_table(config, ws) if row["status"] in ("running", "done")}
        time.sleep(0.2)
    assert job.progress().status == "done", job.progress().message + job.log_tail()
    # the table moved while the recipe ran (a tiny stage can start and end between two looks, so not which)
    assert seen
    at.run()
    [stages] = [d.value for d in at.dataframe if "step" in d.value.columns]
    assert list(stages["step"]) == ["generate", "sft", "eval"] and set(stages["status"]) == {"done"}
    assert {link.label for link in at.get("page_link")} >= {"generate: Traces", "sft: Train", "eval: Evaluate"}
    [summary] = [d.value for d in at.dataframe if "iteration" in d.value.columns and "model" in d.value.columns]
    assert list(summary["model"]) == ["cai"]  # the SFT model, against the base
    # the page shows no button that would start it twice while it runs, and nothing outside its recipes folder
    assert at.selectbox(key="recipe_file").options == ["tiny.yaml"]
