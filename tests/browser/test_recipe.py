"""The Recipe page in a real browser: start a tiny SFT-only recipe, watch its stages advance to the end, open a
stage's page from its link, and download the report.

It has its own app server (`app_launching_jobs`, jobs single-threaded) and its own recipes folder."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

import pytest
import yaml
from playwright.sync_api import expect

from cai_core.jobs import JobFolder

from ..test_recipe import tiny_recipe
from .conftest import app_launching_jobs, browser_page
from .harness import wait_for_app, wait_for_job_end_redraw
from .seed import model_in_workspace

pytestmark = pytest.mark.browser


def test_start_a_tiny_recipe_watch_its_stages_and_download_its_report(chromium, tmp_path_factory, tiny_model_path):
    recipes = tmp_path_factory.mktemp("recipes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAI_RECIPES_DIR", str(recipes))
        with app_launching_jobs(tmp_path_factory, "browser-recipe") as app:
            model = model_in_workspace(tiny_model_path, app.workspace)
            config = tiny_recipe(model, stop_after="sft", arms=["cai"], name="tiny")
            (recipes / "tiny.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)), encoding="utf-8")
            _scenario(chromium, app, config)


def _scenario(chromium, app, config):
    with browser_page(chromium) as page:
        page.goto(f"{app.url}/Recipe")
        wait_for_app(page)
        expect(page.get_by_text("Not started yet.")).to_be_visible()
        page.locator(".st-key-recipe_start button").click()
        progress = page.get_by_test_id("stProgress")
        # the stages advance one by one: the first finished stage's link shows before the last one has run
        expect(page.get_by_role("link", name="generate: Traces").first).to_be_visible(timeout=120_000)
        expect(progress.get_by_text("3/3 stages").first).to_be_visible(timeout=180_000)
        job = JobFolder(app.workspace.runs_dir / config.recipe_id)
        assert job.progress().status == "done", job.progress().message
        expect(page.get_by_role("link", name="eval: Evaluate").first).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
        expect(page.get_by_test_id("stException")).to_have_count(0)
        wait_for_job_end_redraw(page, "recipe_refresh")
        with page.expect_download(timeout=60_000) as download:
            page.locator(".st-key-recipe_report button").click()
        report = download.value.path().read_text(encoding="utf-8")
        assert download.value.suggested_filename == "tiny-report.html"
        assert "<h1>CAI recipe report: tiny</h1>" in report and "<h2>Stages</h2>" in report
        scripts = ScriptSources()
        scripts.feed(report)
        assert scripts.count >= 1 and scripts.sources == []  # plotly.js inlined: it opens offline

        page.get_by_role("link", name="sft: Train").first.click()
        wait_for_app(page)
        expect(page.get_by_role("heading", name="Train")).to_be_visible()


class ScriptSources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.count, self.sources = 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.count += 1
            self.sources += [value for name, value in attrs if name == "src"]
