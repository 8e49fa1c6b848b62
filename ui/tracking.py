"""The experiment tracker a run started from a page reports to, picked as the CLI's --tracker is."""

import typing

import streamlit as st

from cai_core.tracking import TrackerChoice, tracker_field

TRACKERS = typing.get_args(TrackerChoice)


def tracker_choice(default: str, key: str) -> str:
    """A tracker, starting at DEFAULT (what the run's config file says)."""
    help_text = tracker_field().metadata["help"]
    return st.selectbox("Experiment tracker", TRACKERS, index=TRACKERS.index(default), key=key, help=help_text)
