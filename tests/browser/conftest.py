"""Fixtures for the browser tests: one app server on seeded data for the whole session, one Chromium,
and a fresh browser context (so a fresh Streamlit session) for each test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cai_core.workspace import Workspace

from .harness import CHROMIUM, LOOK_MS, VIEWPORT, launch_chromium, running_app
from .seed import copy_constitutions, seeded_data


@dataclass(frozen=True)
class App:
    url: str
    workspace: Workspace
    constitutions: Path


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (`make browser` or `apt-get install chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def app(chromium, tmp_path_factory) -> App:
    root = tmp_path_factory.mktemp("browser-app")
    workspace = seeded_data(root)
    # the server's output goes to ROOT/streamlit.log, for reading when a test fails
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


@contextmanager
def app_launching_jobs(tmp_path_factory, name: str, seeded: bool = True) -> Iterator[App]:
    """An app server of its own, on its own seeded data (or, not `seeded`, an empty data folder), for tests
    that launch jobs from the page. It runs with OMP_NUM_THREADS=1 so that the jobs it starts (which inherit
    its environment) do not fight themselves for this 2-core machine's cores."""
    root = tmp_path_factory.mktemp(name)
    if seeded:
        workspace = seeded_data(root)
    else:
        copy_constitutions(root / "constitutions")
        workspace = Workspace(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
            yield App(url, workspace, root / "constitutions")


def reaches_outside(url: str) -> bool:
    """A request that leaves this machine: the app must work offline and never send the browser elsewhere."""
    return not url.startswith(("data:", "blob:")) and urlsplit(url).hostname not in ("127.0.0.1", "localhost")


@contextmanager
def browser_page(chromium, **context_options) -> Iterator:
    """A page in a fresh browser context (so a fresh Streamlit session). Every browser test opens its pages
    here, so every one of them fails if a page asked for anything outside this machine."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True, **context_options)
    outside: list[str] = []
    context.on("request", lambda request: outside.append(request.url) if reaches_outside(request.url) else None)
    page = context.new_page()
    page.set_default_timeout(LOOK_MS)
    try:
        yield page
    finally:
        context.close()
    assert outside == [], f"the page asked for something outside this machine: {outside}"


@pytest.fixture
def page(chromium, app):
    with browser_page(chromium) as page:
        yield page
