"""The server's log while the app works with a model loaded: once transformers is imported, Streamlit's file
watcher examined every module in sys.modules at each rerun, and transformers' lazy modules import on that look,
logging a `No module named 'torchvision'` traceback for each of its image processors, every rerun (3,090 of them
in one first hour). The app runs with the project's Streamlit config, as `cai app` runs it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import app_launching_jobs, browser_page
from .harness import choose_model, settle, wait_for_app
from .seed import model_in_workspace

pytestmark = pytest.mark.browser


@pytest.fixture
def log_app(chromium, tmp_path_factory):
    with app_launching_jobs(tmp_path_factory, "browser-server-log") as app:
        yield app


def test_pages_drawn_with_a_model_loaded_leave_no_import_tracebacks_in_the_log(chromium, log_app, tiny_model_path):
    with browser_page(chromium) as page:
        page.goto(f"{log_app.url}/Constitution")
        wait_for_app(page)
        choose_model(page, model_in_workspace(tiny_model_path, log_app.workspace))
        page.get_by_role("tab", name="Try it").click()
        page.locator(".st-key-try_run button").click()
        # the model answered: transformers is loaded in the server
        revision = page.get_by_role("tabpanel", name="Try it").get_by_text("Revision", exact=True)
        expect(revision).to_be_visible(timeout=180_000)
        for name in ("Traces", "Agreement", "Evaluate", "Constitution"):  # reruns with transformers imported
            page.goto(f"{log_app.url}/{name}")
            wait_for_app(page)
            settle(page)
    log = (log_app.workspace.root.parent / "streamlit.log").read_text(encoding="utf-8", errors="replace")
    assert log.count("Traceback") == 0 and "No module named" not in log, log[-3000:]
