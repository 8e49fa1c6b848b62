"""The Agreement page's widgets: its figures, tables and charts, in words (`COLUMN_WORDS`), and its filters."""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import streamlit as st

from cai_core.agreement import COLUMN_WORDS
from cai_core.eval_report import chart_text


def shown(value) -> str:
    """A figure for st.metric: three decimals, or a dash where it is undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value):.3f}"


def table(rows, **kwargs) -> None:
    """A dashboard table (a frame, or rows as dicts) without its index, its columns named in words, each with its
    meaning on hover (`COLUMN_WORDS`)."""
    columns = rows.columns if hasattr(rows, "columns") else list(rows[0]) if rows else []
    words = {
        column: st.column_config.Column(label, help=meaning)
        for column in columns
        if column in COLUMN_WORDS
        for label, meaning in [COLUMN_WORDS[column]]
    }
    st.dataframe(rows, hide_index=True, column_config=words, **kwargs)


CHART_WORDS = {column: label for column, (label, _) in COLUMN_WORDS.items()}


def agreement_bars(container, frame: pd.DataFrame, column: str, title: str, key: str, empty: str) -> None:
    """Agreement with people by `column` (principle, judge model) as bars, or `empty` where none was measured."""
    measured = frame.dropna(subset=["agreement"])
    if measured.empty:
        container.caption(empty)
        return
    container.plotly_chart(
        px.bar(
            measured.assign(**{column: chart_text(measured[column])}),
            x=column,
            y="agreement",
            range_y=[0, 1],
            title=title,
            labels=CHART_WORDS,
        ),
        key=key,
    )


def pick_many(label: str, options: list[str], key: str, default: list[str] | None = None) -> list[str]:
    """A filter: none chosen keeps everything. Choices no longer on offer (another data folder) are dropped."""
    st.session_state[key] = [v for v in st.session_state.get(key, default or []) if v in options]
    return st.multiselect(label, options, key=key, placeholder="all")
