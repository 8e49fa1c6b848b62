"""The evaluation report stands on its own: its colours, its settings, its escaping."""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import plotly.io as pio

from cai_core.eval_report import EvalSummary, refusal_chart, report_html
from cai_core.evalsets import LABELS


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


def test_refusal_chart_names_each_point_in_its_legend_not_beside_it():
    # two models under two wrappers that all refuse nothing: four points on one spot, as weak models give
    cells = [(m, w, label) for m in ("base", "tuned") for w in ("none", "refusal-suppression") for label in LABELS]
    refusals = pd.DataFrame(cells, columns=["model", "wrapper", "label"]).assign(refusal_rate=0.0, low=0.0, high=0.2)
    figure = refusal_chart(replace(_summary(), refusals=refusals))
    assert all(trace.mode == "markers" for trace in figure.data)  # no text that would print over its neighbours
    points = {trace.name: trace.marker for trace in figure.data}
    assert set(points) == {f"{m} · {w}" for m, w, _ in cells}
    assert points["base · none"].color == points["base · refusal-suppression"].color != points["tuned · none"].color
    assert points["base · none"].symbol == points["tuned · none"].symbol != points["tuned · refusal-suppression"].symbol
    assert figure.layout.legend.orientation == "h"
    # the title's lines fit a chart half the page wide
    assert all(len(re.sub("<[^>]+>", "", line)) <= 80 for line in figure.layout.title.text.split("<br>"))
