"""What engine services run for the data folder (`cai_core.engine_service`), with a Stop for each: drawn in the
sidebar of every page and on the Home page."""

from __future__ import annotations

import streamlit as st

from cai_core import engine_service
from cai_core.workspace import Workspace

from .text import md_escape


def _stop(ws: Workspace, folder: str, dtype: str) -> None:
    engine_service.stop(ws, folder, dtype)


def show_services(ws: Workspace, *, place: str, can_stop: bool) -> None:
    """One line per service (model, engine, loopback URL, memory, since when) and its Stop button; `place` keeps
    the buttons of the sidebar and of a page apart."""
    rows = engine_service.describe(ws)
    if not rows:
        st.caption("No engine service runs: the first job or “Try it” that needs one starts it.")
    for row in rows:
        st.text(
            f"{row['model'].rsplit('/', 1)[-1]} · {row['engine']} ({row['dtype']}) · {row['state']}\n"
            f"{row['url']} · {row['memory_mib']} MiB · since {row['since']}"
        )
        st.button(
            "Stop",
            key=f"stop-engine-{place}-{row['pid']}",
            on_click=_stop,
            args=(ws, row["folder"], row["dtype"]),
            disabled=not can_stop,
            help=f"Stop the vLLM service for {md_escape(row['model'])}; the next job that needs it starts it again.",
        )
