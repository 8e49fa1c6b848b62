"""The Agreement page while a labelling run is partway: its labels join the dashboard as they land, without a
reload, as the page promises when it starts one.

The label run here is a job folder this test writes to as a running job does (its progress names this test's
process, which is alive), so the test decides when labels land."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from cai_core.constitution import load_constitution
from cai_core.jobs import JobFolder
from cai_core.records import AILabel, to_row

from .conftest import App, browser_page
from .harness import running_app, wait_for_app
from .seed import SEED_JUDGE, seed_pair_texts, seeded_data

pytestmark = pytest.mark.browser

PAIRS = 24
LANDED = 9


@pytest.fixture
def partway(chromium, tmp_path_factory):
    """An app whose data has pairs and a label run that is running and has labelled none of them yet."""
    root = tmp_path_factory.mktemp("browser-agreement-live")
    workspace = seeded_data(root)
    pairs = seed_pair_texts(PAIRS)
    pairs_job = JobFolder.create(workspace.runs_dir, "seed-pairs", {"kind": "pairs", "model": "seed-model"})
    pairs_job.append("pairs", [to_row(p) for p in pairs])
    pairs_job.set_progress("done", PAIRS, PAIRS)
    constitution = load_constitution(root / "constitutions" / "hhh.yaml")
    job = JobFolder.create(
        workspace.runs_dir,
        "label-partway",
        {"kind": "label", "model": SEED_JUDGE, "config": {}, "constitution": constitution.snapshot()},
    )
    job.set_progress("running", 0, PAIRS, unit="label")
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions"), job, pairs, constitution


def test_labels_of_a_running_job_join_the_dashboard_as_they_land(chromium, partway):
    app, job, pairs, constitution = partway
    with browser_page(chromium) as page:
        page.goto(f"{app.url}/Agreement")
        wait_for_app(page)
        expect(page.get_by_text("No AI labels yet")).to_be_visible()
        expect(page.get_by_text(f"0/{PAIRS} labels").first).to_be_visible()

        principle = constitution.enabled_principles[0].id
        job.append(
            "ai_labels",
            [
                to_row(
                    AILabel(
                        job.run_id,
                        p.pair_id,
                        principle,
                        SEED_JUDGE,
                        constitution.version,
                        "sample",
                        "logprob",
                        False,
                        0,
                        0.8,
                        0.3,
                        0.75,
                        False,
                    )
                )
                for p in pairs[:LANDED]
            ],
        )
        job.set_progress("running", LANDED, PAIRS, unit="label")

        # the card follows the job, and the dashboard takes the labels in without a reload
        expect(page.get_by_text(f"{LANDED}/{PAIRS} labels").first).to_be_visible()
        expect(page.get_by_role("heading", name="One label run")).to_be_visible(timeout=30_000)
        expect(page.get_by_text(f"{LANDED} labelled pairs, 0 failed")).to_be_visible()
        expect(page.get_by_text("No AI labels yet")).to_have_count(0)
        expect(page.get_by_test_id("stException")).to_have_count(0)
