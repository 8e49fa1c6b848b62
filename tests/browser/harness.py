"""Run the app with `streamlit run` on a free port and drive it with Debian's Chromium through Playwright.

Playwright's own browser download does not work offline here, so it launches the system Chromium with
the flags from shared/NOTES.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import expect

from cai_core.serve import streamlit_command
from cai_core.workspace import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
# How long a server started for a test may take to answer: a quiet machine needs seconds, but `make test` runs
# two workers on 2 cores beside the jobs they start, and a start-up once took over 60 s at load 23.
SERVER_START_S = 180
# How long a look at the page waits for what it expects: a page's action and an `expect` alike. Playwright's
# `expect` waits 5 s unless told, too short for a rerun on a loaded 2-core machine; a look that finds what it
# expects returns at once, so this costs nothing where the app is quick.
LOOK_MS = 20_000
expect.set_options(timeout=LOOK_MS)
# How long one run of a page's script may take: a page's first run on a fresh server imports the page's modules,
# which took over 20 s at a load of 18.
RUN_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(data_dir: Path, constitutions_dir: Path, log_path: Path):
    """`streamlit run app.py` with the app pointed at DATA_DIR; yields its base URL."""
    port = free_port()
    env = {**os.environ, "CAI_DATA_DIR": str(data_dir), "CAI_CONSTITUTIONS_DIR": str(constitutions_dir)}
    env.pop("CAI_DB", None)
    with open(log_path, "wb") as log:
        # the command `cai app` runs, so the tests meet the app as people do
        server = subprocess.Popen(
            streamlit_command("127.0.0.1", port), env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start; see {log_path}") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def wait_for_app(page, timeout: float = RUN_MS) -> None:
    """Wait until the page is drawn and its script run has finished."""
    page.wait_for_selector(
        '[data-testid="stApp"][data-test-script-state="notRunning"] [data-testid="stMain"] h1', timeout=timeout
    )


def settle(page, timeout: float = RUN_MS) -> None:
    """After an action that reruns the script: give the rerun a moment to start, then wait for its end."""
    page.wait_for_timeout(250)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


def type_into(field, text: str) -> None:
    """Fill a text or number input and commit it (Streamlit sends its value on Enter), then wait for the rerun."""
    field.fill(text)
    field.press("Enter")
    settle(field.page)


def choose_model(page, spec: str) -> None:
    """Name a model in the sidebar as a user does for one its list does not hold: "other…", then the spec."""
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("Model", exact=True).click()
    page.get_by_role("option", name="other…").click()
    type_into(sidebar.get_by_label("Model spec", exact=True), spec)


def go_to(page, label: str) -> None:
    """Follow the sidebar's link to the page LABEL, as a user does (the session carries over), and wait until that
    page is drawn (its heading is its label) and its run has finished. The switch is client-side: right after the
    click the page left behind is still drawn and finished, and a wait for any finished page returned on it (in a
    fresh-clone CI run)."""
    page.get_by_test_id("stSidebar").get_by_role("link", name=label, exact=True).click()
    heading = page.get_by_test_id("stMain").get_by_role("heading", name=label, exact=True, level=1)
    expect(heading).to_be_visible(timeout=RUN_MS)  # drawn once the page's imports are done
    wait_for_app(page)


def wait_for_job_end_redraw(page, refresh_key: str, timeout: float = 30_000) -> None:
    """Once the last running job of a page's live panel has ended, the page redraws itself whole, once, and that
    redraw puts the panel's Refresh button (key REFRESH_KEY) back (`ui.job_controls.live_panel`): wait for it,
    then for the run to end. A click made before that redraw lands on an element it replaces and is lost. Named by
    its key: another panel of the page, with no job running, has a Refresh button of its own all along. Attached
    rather than visible: the Agreement page folds its runs away once none is labelling."""
    expect(page.locator(f".st-key-{refresh_key} button")).to_be_attached(timeout=timeout)
    settle(page)
