"""The app's pages in the order of the work, one list that the sidebar and the home page both read.

Streamlit's own sidebar list is switched off (`.streamlit/config.toml`: it would order the pages by file name
and call the home page "app"); every page draws this one instead, through `ui.settings.setup`. The pages keep
their files and their addresses (/Constitution, /Evaluate, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

HOME = "app.py"


@dataclass(frozen=True)
class Step:
    page: str  # the page's script, relative to app.py
    label: str  # its name in the sidebar
    icon: str  # beside its name in the sidebar (Material Symbols: the app bundles the font)
    tab_icon: str  # in the browser's tab: an emoji, since a Material symbol there is fetched from Google's servers
    purpose: str  # what the home page says it is for
    action: str  # the home page's link to it


STEPS = [
    Step(
        "pages/1_Constitution.py",
        "Constitution",
        ":material/gavel:",
        "📜",
        "Change principles, save them as versions, diff and restore versions, preview the exact prompts a "
        "principle produces, and try one critique→revision with the model.",
        "Open the constitution editor",
    ),
    Step(
        "pages/3_Generate.py",
        "Generate",
        ":material/rocket_launch:",
        "🚀",
        "Start an SL-CAI run over the demo prompts (or your own). It runs in the background: closing the tab "
        "does not stop it, and the page shows its progress.",
        "Start a generation run",
    ),
    Step(
        "pages/2_Traces.py",
        "Traces",
        ":material/search:",
        "🔍",
        "Step through prompt → answer → critique → revision with word-level diffs, and record whether each "
        "revision got better and each critique was valid.",
        "Open the trace inspector",
    ),
    Step(
        "pages/9_Data.py",
        "Data",
        ":material/dataset:",
        "🗂️",
        "Make response pairs from your traces (first answer against revision, or K sampled answers), import "
        "pairs and people's labels from a file, and export SFT data, pairs and preferences.",
        "Make, import and export data",
    ),
    Step(
        "pages/5_Annotate.py",
        "Annotate",
        ":material/touch_app:",
        "✍️",
        "Label response pairs yourself, by keyboard: which answer is better by the constitution's principles.",
        "Label pairs",
    ),
    Step(
        "pages/6_Agreement.py",
        "Agreement",
        ":material/handshake:",
        "🤝",
        "Let the AI judge label the pairs in both orders, and see where it agrees with people and whether to trust it.",
        "Open the agreement dashboard",
    ),
    Step(
        "pages/4_Train.py",
        "Train",
        ":material/model_training:",
        "🏋️",
        "SFT on the revisions, a reward model on the AI labels, PPO against it, or DPO straight from the labels, "
        "with live curves; a finished model joins the sidebar's model list.",
        "Start a training run",
    ),
    Step(
        "pages/7_Evaluate.py",
        "Evaluate",
        ":material/monitoring:",
        "📊",
        "Compare models on red-team and benign prompts, with jailbreak wrappers: win rates, ratings, refusals "
        "and over-refusals, and which principles' revisions helped.",
        "Start an evaluation",
    ),
    Step(
        "pages/8_Recipe.py",
        "Recipe",
        ":material/account_tree:",
        "🧪",
        "Run the whole CAI recipe (SL-CAI, SFT, pairs, AI labels, reward model, RL, evaluation) as one job, "
        "iteration after iteration, and read what each iteration changed.",
        "Run a recipe",
    ),
]


def tab_icon(label: str) -> str:
    """The icon a page shows in its browser tab; the home page's is the workbench's own."""
    return next((step.tab_icon for step in STEPS if step.label == label), "⚖️")


def sidebar_navigation() -> None:
    """Home, then every step in order, at the top of the sidebar."""
    with st.sidebar:
        st.page_link(HOME, label="Home", icon=":material/home:")
        for step in STEPS:
            st.page_link(step.page, label=step.label, icon=step.icon)
