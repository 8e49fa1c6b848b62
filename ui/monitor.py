"""The reward-hacking monitor of one RL run as the Train and Recipe pages show it: its alerts, then its signals'
curves against their thresholds (drawn by `cai_core.train.monitor.monitor_charts`, as the recipe's report is)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cai_core.train.monitor import alert_lines, monitor_charts
from ui.text import md_escape


def monitor_section(metrics: pd.DataFrame, rules: str, key: str) -> bool:
    """False, showing nothing, when the run logged no monitor signals (not an RL run, or not started yet)."""
    figures = monitor_charts(metrics, rules)
    if not figures:
        return False
    st.markdown("**Reward-hacking monitor** (dashed: a rule's threshold; red dots: where it fired)")
    for line in alert_lines(metrics):
        st.warning(md_escape(f"Reward-hacking monitor: {line}"), icon=":material/warning:")
    cols = st.columns(3)
    for i, (signal, figure) in enumerate(figures.items()):
        cols[i % 3].plotly_chart(figure, key=f"{key}-{signal}")
    return True
