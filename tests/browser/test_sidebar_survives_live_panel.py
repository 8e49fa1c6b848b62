"""The sidebar's settings survive leaving a page whose job panel is redrawing itself.

A job panel (`ui.job_controls.live_panel`) is a fragment that reruns every few seconds while a job is active.
A fragment-only rerun that fires after the browser has switched pages dropped every sidebar widget's value on
Streamlit 1.67 (streamlit/streamlit#10805), so the next page drew the sidebar at its defaults: the Model went
back to `default` and the next job ran on the wrong model, silently (`ui.settings` now keeps the settings
under a plain session key). Here a real process keeps a job running (its progress says so and its pid is
alive), the Generate page's panel ticks, and the sidebar's link to another page is followed at several moments
of a tick. Before the fix the model was lost at every one of them.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from playwright.sync_api import expect

from cai_core.jobs import JobFolder
from cai_core.workspace import PROJECT_ROOT
from ui.settings import OTHER_MODEL

from .conftest import App, app_launching_jobs, browser_page
from .harness import choose_model, go_to, settle, wait_for_app

pytestmark = pytest.mark.browser

CHOSEN = "someone/chosen-model"  # a hub id: the sidebar takes it as typed, and nothing here loads it
# a job whose live process reports it running for argv[3] seconds (longer than an attempt: it is killed)
RUNNING_JOB = (
    "import sys, time; from pathlib import Path; from cai_core.jobs import JobFolder; "
    "spec = {'kind': 'generate', 'model': 'someone/other', 'config': {}}; "
    "job = JobFolder.create(Path(sys.argv[1]), sys.argv[2], spec); "
    "job.set_progress('running', 0, 1); time.sleep(float(sys.argv[3])); job.set_progress('done', 1, 1)"
)
# ms after the panel's first tick at which a sidebar link is followed: before, around and after the next
# (ticks come every 2 s)
CLICK_DELAYS = (300, 1200, 2100, 3000)


@pytest.fixture(scope="module")
def ticking_app(chromium, tmp_path_factory):
    with app_launching_jobs(tmp_path_factory, "browser-sidebar-live-panel", seeded=False) as app:
        yield app


def sidebar_model(page) -> str | None:
    """The spec typed into the sidebar; None where the Model box shows a listed model (its spec box hidden). Read
    from the Model box first, which the page always draws: a look for the spec box alone, made while a redraw had
    not drawn it yet, would read a kept model as lost."""
    sidebar = page.get_by_test_id("stSidebar")
    if sidebar.get_by_label("Model", exact=True).input_value() != OTHER_MODEL:
        return None
    return sidebar.get_by_label("Model spec", exact=True).input_value()


def see_running(page, card, timeout_s: float = 30) -> None:
    """Refresh the runs until the job's card says running. Under load a redraw may be under way when the
    test looks, the Refresh button not drawn yet, or gone where a redraw saw the job first; so look again."""
    refresh = page.locator(".st-key-refresh_runs button")
    running = card.get_by_text("running", exact=True)
    deadline = time.monotonic() + timeout_s
    while not running.count() and time.monotonic() < deadline:
        if refresh.count():
            refresh.click()
        settle(page)
        page.wait_for_timeout(500)
    expect(running).to_be_visible()


def test_the_sidebar_model_survives_leaving_a_page_whose_job_panel_ticks(chromium, ticking_app: App):
    with browser_page(chromium) as page:
        page.goto(ticking_app.url)
        wait_for_app(page)
        choose_model(page, CHOSEN)
        assert sidebar_model(page) == CHOSEN

        lost = []
        for attempt, delay in enumerate(CLICK_DELAYS):
            go_to(page, "Generate")
            run_id = f"ticking-{attempt}"
            job = subprocess.Popen(
                [sys.executable, "-c", RUNNING_JOB, str(ticking_app.workspace.runs_dir), run_id, "20"],
                cwd=PROJECT_ROOT,
            )
            try:
                folder = JobFolder(ticking_app.workspace.runs_dir / run_id)
                while folder.progress().status != "running":
                    assert job.poll() is None, "the job's process ended before it reported running"
                    page.wait_for_timeout(100)
                card = page.locator(f".st-key-run-{run_id}")
                see_running(page, card)
                page.wait_for_timeout(2000 + delay)  # the panel has redrawn itself once or more
                expect(card.get_by_text("running", exact=True)).to_be_visible()
                go_to(page, "Data")
                page.wait_for_timeout(2500)  # a tick the switch did not stop would have fired by now
                settle(page)
                if sidebar_model(page) != CHOSEN:
                    lost.append((delay, sidebar_model(page)))
                    choose_model(page, CHOSEN)  # chosen again for the next attempt
            finally:
                job.kill()
                job.wait()
        assert lost == [], f"the sidebar's model was lost after leaving a ticking panel: {lost}"
