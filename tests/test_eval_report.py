"""The evaluation report stands on its own: its colours, its settings, its escaping."""

from __future__ import annotations

import pandas as pd
import plotly.io as pio

from cai_core.eval_report import EvalSummary, report_html


def _summary() -> EvalSummary:
    empty = pd.DataFrame()
    refusals = pd.DataFrame(
        {
            "model": ["base", "base"],
            "wrapper": ["none", "none"],
            "label": ["harmful", "benign"],
            "refusal_rate": [0.25, 0.0],
            "low": [0.1, 0.0],
            "high": [0.5, 0.2],
            "n": [8, 8],
        }
    )
    settings = {"eval-1": {"models": ["base=default", "<b>x</b>"], "judge": "default", "constitution version": "abc"}}
    return EvalSummary("eval-1", None, empty, empty, empty, empty, refusals, empty, empty, settings)


def test_report_keeps_plotly_colours_under_streamlit_and_lists_the_settings(monkeypatch):
    # Importing Streamlit makes its own template (placeholder colours #000001...) plotly's default, as in the app
    import streamlit  # noqa: F401

    monkeypatch.setattr(pio.templates, "default", "streamlit")
    page = report_html(_summary())
    assert "#000001" not in page
    assert "#636efa" in page  # plotly_white's first colour
    assert "<h2>Settings</h2>" in page and "constitution version" in page and "base=default" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
