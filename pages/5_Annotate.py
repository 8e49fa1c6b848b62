"""Annotate: compare two responses to one prompt and say which is better, one pair at a time.

Each annotator gets their own queue (`Store.annotation_queue`): never a pair they already labelled or
skipped, never one that already has the wanted number of labels. The sides are shuffled per annotator
by the store, and the mapping back to the pair's own sides is recorded with the label, never shown.
"""

import pandas as pd
import streamlit as st

from cai_core.constitution import ConstitutionError, list_constitutions, load_constitution
from cai_core.records import AnnotationItem
from pages import connect, count, flash, md_escape, setup, show_flash, show_text, when

settings = setup("Annotate")
ws = settings.workspace
ss = st.session_state

CHOICES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}
NONE = "(none)"


def as_shown(choice: str, swapped: bool) -> str:
    """A stored choice (about response_a / response_b) in the terms the annotator saw (left = "A")."""
    return {"a": "b", "b": "a"}.get(choice, choice) if swapped else choice


st.title("Annotate")
show_flash()

cols = st.columns([3, 1, 3])
annotator = cols[0].text_input("Your name", key="annotator", persist_state="session").strip()
overlap = int(
    cols[1].number_input(
        "Labels wanted per pair", min_value=1, max_value=20, value=2, key="overlap", persist_state="session"
    )
)
files = list_constitutions(ws.constitutions_dir)
constitution_file = cols[2].selectbox(
    "Guidelines from constitution",
    files,
    format_func=lambda p: p.name,
    key="annotate_constitution",
    persist_state="session",
)

with st.expander("Guidelines"):
    st.write(
        "Read the conversation, then the two responses, and pick the better one by the principles below. "
        "Choose tie when neither is better, both bad when neither is acceptable, skip when you cannot judge."
    )
    if constitution_file is None:
        st.caption("No constitution files found.")
    else:
        try:
            constitution = load_constitution(constitution_file)
        except ConstitutionError as exc:
            st.error(md_escape(str(exc)))
        else:
            for principle in constitution.principles:
                if principle.enabled:
                    st.markdown(f"**{md_escape(principle.name)}**")
                    st.text(principle.preference_question)

if not annotator:
    st.info("Type your name to start: your labels and your queue are kept under it.")
    st.stop()

if ss.pop("reset_reopen", False):
    ss["reopen"] = NONE

with connect(ws) as store:
    progress = store.annotation_progress(annotator, overlap=overlap)
    cols = st.columns(3)
    cols[0].metric("Labelled by you", progress["labelled"])
    cols[1].metric("Left in your queue", progress["remaining"])
    cols[2].metric("Pairs", progress["pairs"])
    total = progress["labelled"] + progress["remaining"]
    if total:
        st.progress(progress["labelled"] / total)

    # --- my past labels: undo the last, re-open any ----------------------------------------------------
    mine = store.human_labels(annotator=annotator, newest_first=True)
    with st.expander(f"Your labels ({len(mine)})", expanded=False):
        if mine:
            st.dataframe(
                pd.DataFrame(
                    {
                        "pair": [lb.pair_id for lb in mine],
                        "your choice": [CHOICES[as_shown(lb.choice, lb.shown_swapped)] for lb in mine],
                        "rationale": [lb.rationale for lb in mine],
                        "saved": [when(lb.updated_at) for lb in mine],
                    }
                ),
                hide_index=True,
            )
        options = [NONE, *(lb.pair_id for lb in mine)]
        if ss.get("reopen") not in options:
            ss["reopen"] = NONE
        st.selectbox("Re-open one of your labels to change it", options, key="reopen")
        undo = st.button("Undo my last label", key="undo", disabled=not mine)
    if undo:
        undone = store.undo_human_label(annotator)
        ss["reset_reopen"] = True
        if undone:
            flash("info", f"Removed your label on pair {undone.pair_id}; it is back in your queue.")
        st.rerun()

    # --- the pair to judge --------------------------------------------------------------------------
    reopened = ss["reopen"] if ss["reopen"] != NONE else None
    previous = None
    if reopened:
        previous = next(lb for lb in mine if lb.pair_id == reopened)
        pair = store.pair(reopened)
        swapped = previous.shown_swapped
        item = AnnotationItem(
            pair.pair_id,
            pair.prompt,
            pair.response_b if swapped else pair.response_a,
            pair.response_a if swapped else pair.response_b,
            swapped,
        )
    else:
        queue = store.annotation_queue(annotator, overlap=overlap, limit=1)
        item = queue[0] if queue else None

    st.divider()
    if item is None:
        st.success(f"Your queue is empty: every pair has {count(overlap, 'label')} or a label from you.")
        st.stop()
    if previous:
        st.info(f"Editing your label ({CHOICES[as_shown(previous.choice, previous.shown_swapped)]}) on this pair.")
    st.caption(md_escape(f"Pair {item.pair_id}"))
    st.markdown("**Conversation**")
    show_text(item.prompt, height=300)
    left, right = st.columns(2)
    with left:
        st.markdown("**Response A**")
        show_text(item.left)
    with right:
        st.markdown("**Response B**")
        show_text(item.right)
    rationale = st.text_area(
        "Why (optional)", value=previous.rationale if previous else "", key=f"rationale_{item.pair_id}", height=80
    )
    buttons = st.columns(len(CHOICES) + (1 if previous else 0))
    clicked = None
    for col, (choice, label) in zip(buttons, CHOICES.items(), strict=False):
        if col.button(label, key=f"choose_{choice}", type="primary" if choice in ("a", "b") else "secondary"):
            clicked = choice
    if previous and buttons[-1].button("Cancel edit", key="cancel_edit"):
        ss["reset_reopen"] = True
        st.rerun()
    if clicked:
        try:
            store.save_human_label(item.label(annotator, clicked, rationale.strip()))
        except (ValueError, KeyError) as exc:
            st.error(md_escape(str(exc)))
        else:
            ss["reset_reopen"] = True
            flash("success", f"Saved: {CHOICES[clicked]} on pair {item.pair_id}.")
            st.rerun()
