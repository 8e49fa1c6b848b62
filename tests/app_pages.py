"""The app's pages under Streamlit's AppTest, opened as a browser's first visit does: the Home page first (it sets
up the session, the sidebar's settings among it), then the page named, by its file."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from cai_core.workspace import PROJECT_ROOT


def open_page(page: str | None = None) -> AppTest:
    """The app drawn on PAGE (e.g. "pages/4_Train.py"), or its Home page; fails on any exception it showed."""
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
