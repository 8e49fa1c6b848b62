"""Annotate: compare two responses to one prompt and say which is better, one pair at a time.

Each annotator gets their own queue (`Store.claim_annotations`): never a pair they already labelled or
skipped, never one that already has the wanted number of labels. The sides are shuffled per annotator
by the store, and the mapping back to the pair's own sides is recorded with the label, never shown.

The queue serves pairs in their origin's order, or disagreement-first: the pairs a label run's judge flips on
under swap, is least sure of, or whose principles or annotators disagree on come first (`judge_audit.score_queue`
freezes those scores; the Agreement page reweights the agreement measured on these labels). A constitution A/B's
pairs come here the same way once sent from its result (`ab_people`): disagreement-first by that A/B serves them.

The evaluation's graders are audited here too, each in its own queue ("Was this a refusal?", "Which answer is more
harmful?", "Is this answer harmful?"): the sampled verdicts of an eval run (sent from the Evaluate page or `cai eval
audit`), one at a time, answered with one key (1/2/3, 5 for skip); `grader_audit` reads the answers back as the
grader's agreement with people.

Choosing and saving are two steps, so that the keyboard alone can label: 1/2/3/4 (5 for skip) choose, Enter
saves. In the queue the labelling panel (`ui.label_keys`) does it in the browser: the next pair shows at once
from the pairs the store claimed ahead for this annotator, and the label reaches the server after. Editing a
label already saved uses Streamlit's own buttons and shortcuts. Keys typed into a text box are never choices.
"""

import pandas as pd
import streamlit as st

from cai_core.agreement import label_facets
from cai_core.constitution import ConstitutionError, list_constitutions, load_constitution
from cai_core.grader_audit import QUESTIONS
from cai_core.judge_audit import score_queue
from cai_core.records import MAX_NOTE_CHARS, AnnotationItem
from cai_core.store import GraderItem, GraderLabel, PairQueue, Store, StoreError
from ui.label_keys import LOOK_AHEAD, label_panel, record_labels
from ui.paging import pager
from ui.settings import connect, follow_context, setup
from ui.text import count, flash, md_escape, show_flash, show_text, when

settings = setup("Annotate")
ws = settings.workspace
ss = st.session_state

CHOICES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}
SHORTCUTS = {"a": "1", "b": "2", "tie": "3", "both_bad": "4", "skip": "5"}
HINT = "Choose with 1 (A better), 2 (B better), 3 (tie), 4 (both bad) or 5 (skip), then press Enter."
NONE = "(none)"
SHOWN_LABELS = 50  # of an annotator's own labels, a page
QUEUE_MODES = {"order": "In order", "contested": "Disagreement first"}
LABEL_QUEUES = {"pairs": "Response pairs", **QUESTIONS}
# per kind of grader verdict: stored answer (as shown) -> (button, key)
AUDIT_CHOICES = {
    "refusal": {"yes": ("Yes, a refusal", "1"), "no": ("No", "2"), "skip": ("Skip", "5")},
    "harm": {
        "a": ("A is more harmful", "1"),
        "b": ("B is more harmful", "2"),
        "same": ("As harmful", "3"),
        "skip": ("Skip", "5"),
    },
    "harmful": {"yes": ("Yes, harmful", "1"), "no": ("No", "2"), "skip": ("Skip", "5")},
}


def as_shown(choice: str, swapped: bool) -> str:
    """A stored choice (about response_a / response_b) in the terms the annotator saw (left = "A")."""
    return {"a": "b", "b": "a"}.get(choice, choice) if swapped else choice


def choose(pair_id: str, choice: str) -> None:
    """Remember the choice for the label being edited until it is saved; it never carries over to another pair."""
    ss["chosen"] = (pair_id, choice)


def submit(annotator: str, item: AnnotationItem, choice: str) -> None:
    """Save the edited label on the pair the annotator was looking at (a callback gets that pair as drawn)."""
    label = item.label(annotator, choice, ss.get(f"rationale_{item.pair_id}", "").strip())
    try:
        with Store.open(ws) as store:
            store.save_human_label(label)
    except (StoreError, ValueError, KeyError) as exc:
        flash("error", f"Not saved: {exc}")
        return
    ss["reset_reopen"] = True
    ss.pop("chosen", None)
    flash("success", f"Saved: {CHOICES[choice]} on pair {item.pair_id}.")


def save_audit(annotator: str, item: GraderItem, shown: str) -> None:
    """Save a person's answer on the sampled verdict they were looking at (a callback gets that item as drawn)."""
    try:
        with Store.open(ws) as store:
            store.save_grader_label(GraderLabel(item.run_id, item.item_id, annotator, item.stored_answer(shown)))
    except (StoreError, ValueError, KeyError) as exc:
        flash("error", f"Not saved: {exc}")
        return
    flash("success", f"Saved: {AUDIT_CHOICES[item.kind][shown][0]}.")


def side_by_side(item, title: str, key: str) -> None:
    """The two texts a person compares, as A on the left and B on the right, shown as text."""
    left, right = st.columns(2)
    with left, st.container(key=f"{key}_left"):
        st.markdown(f"**{title} A**")
        show_text(item.left)
    with right, st.container(key=f"{key}_right"):
        st.markdown(f"**{title} B**")
        show_text(item.right)


def grader_queue(store: Store, annotator: str, overlap: int, kind: str) -> None:
    """The next sampled verdict of this kind for the annotator, and its answer buttons."""
    runs = store.grader_audit_runs()
    if not runs:
        st.info(
            "No evaluation verdicts are out to people yet: send a sample from the Evaluate page's results "
            "(Graders audited by people)."
        )
        return
    run_id = st.selectbox("Evaluation run", runs, key="audit_run")
    progress = store.grader_audit_progress(annotator, run_id, kind, overlap=overlap)
    cols = st.columns(3)
    cols[0].metric("Answered by you", progress["answered"])
    cols[1].metric("Left in your queue", progress["remaining"])
    cols[2].metric("Verdicts sampled", progress["sampled"])
    item = store.claim_grader_item(annotator, run_id, kind, overlap=overlap)
    if item is None:
        st.success(f"Your queue is empty: every sampled verdict has {count(overlap, 'answer')} or one from you.")
        return
    st.divider()
    st.markdown(f"**{QUESTIONS[kind]}**")
    st.caption("Sent to the model:")
    show_text(item.prompt, height=200)
    if kind == "harm":
        side_by_side(item, "Answer", "audit")
    else:
        with st.container(key="audit_answer"):
            st.markdown("**Its answer**")
            show_text(item.left)
    keys = ", ".join(f"{key} ({label})" for label, key in AUDIT_CHOICES[kind].values())
    with st.container(horizontal=True, key="audit_choices"):
        for shown, (label, key) in AUDIT_CHOICES[kind].items():
            st.button(label, key=f"audit_{shown}", shortcut=key, on_click=save_audit, args=(annotator, item, shown))
        st.caption(f"One key answers: {keys}.")


st.title("Annotate")
show_flash()

cols = st.columns([3, 1, 3])
if settings.user:  # the login names the annotator; with no login (on 127.0.0.1) they type their name
    cols[0].text_input("Annotator", value=settings.user, disabled=True)
    annotator = settings.user
else:
    follow_context("annotator", "annotator")  # a page switch drops the widget's value, never the name
    annotator = cols[0].text_input("Your name", key="annotator").strip()
overlap = int(
    cols[1].number_input(
        "Labels wanted per pair", min_value=1, max_value=20, value=2, key="overlap", persist_state="session"
    )
)
names = [p.name for p in list_constitutions(ws.constitutions_dir)]
follow_context("constitution", "annotate_constitution", names)
name = cols[2].selectbox("Guidelines from constitution", names, key="annotate_constitution", persist_state="session")
constitution_file = ws.constitutions_dir / name if name else None

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
                    st.text(f"{principle.name}: {principle.preference_question}")

if ss.pop("reset_reopen", False):
    ss["reopen"] = NONE

with connect(ws) as store:
    # what the panel sent first: before anything can stop this run, and so that the counts below include it
    recorded = record_labels(store)
    for line in recorded.refused:
        st.error(md_escape(line))
    if recorded.saved:
        last = recorded.saved[-1]
        st.success(
            md_escape(
                f"Saved: {CHOICES[as_shown(last.choice, last.shown_swapped)]} on pair {last.pair_id}."
                + (f" ({len(recorded.saved)} labels just now.)" if len(recorded.saved) > 1 else "")
            )
        )
    if not annotator:
        st.info("Type your name to start: your labels and your queue are kept under it.")
        st.stop()
    label_queue = st.radio(
        "Label",
        list(LABEL_QUEUES),
        format_func=LABEL_QUEUES.get,
        key="label_queue",
        horizontal=True,
        help="Response pairs: which of two responses is better. The other queues audit the evaluation's graders: "
        "a sample of an eval run's refusal verdicts, of the judge's harmlessness comparisons, and of the answers "
        "it compared on harm, one at a time.",
    )
    if label_queue != "pairs":
        if ss.pop("queue_settings", None) is not None:
            store.release_claims(annotator)  # the pairs held for this annotator go back to the others
        grader_queue(store, annotator, overlap, label_queue)
        st.stop()
    label_runs = label_facets(store).run_ids
    # the A/Bs whose pairs went to people (`ab_people.send_to_people`) froze their scores as a label run's queue does
    queue_runs = [*label_runs, *(run for run in store.queue_runs() if run not in label_runs)]
    cols = st.columns([1, 2])
    mode = cols[0].radio(
        "Queue",
        list(QUEUE_MODES),
        format_func=QUEUE_MODES.get,
        key="queue_mode",
        horizontal=True,
        help="Disagreement first: the pairs where the judge flips when the answers swap places, is near 50/50, "
        "or where principles or annotators disagree come first, so each label teaches the most.",
    )
    contested_run = None
    if mode == "contested":
        if not queue_runs:
            cols[1].caption("No AI label run or A/B sent to people yet: the queue stays in order until one exists.")
        else:
            contested_run = cols[1].selectbox("Contested by label run or A/B", queue_runs, key="queue_run")
            if contested_run in label_runs:
                score_queue(store, contested_run)  # scores new pairs only: a pair keeps the score it was drawn under
    queue_settings = (annotator, overlap, mode, contested_run)
    if ss.get("queue_settings", queue_settings) != queue_settings:
        store.release_claims(annotator, keep=1)  # the pair on screen stays; the look-ahead follows the new order
    ss["queue_settings"] = queue_settings
    queue = PairQueue(overlap, contested_run=contested_run)
    progress = store.annotation_progress(annotator, queue)
    cols = st.columns(3)
    cols[0].metric("Labelled by you", progress["labelled"])
    cols[1].metric("Left in your queue", progress["remaining"])
    cols[2].metric("Pairs", progress["pairs"])
    total = progress["labelled"] + progress["remaining"]
    if total:
        st.progress(progress["labelled"] / total)

    # --- my past labels: undo the last, re-open any ----------------------------------------------------
    with st.expander(f"Your labels ({progress['labelled']})", expanded=False):
        page = pager("my_labels_page", progress["labelled"], SHOWN_LABELS)
        mine = store.human_labels(
            annotator=annotator, newest_first=True, limit=SHOWN_LABELS, offset=(page - 1) * SHOWN_LABELS
        )
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
        undo = st.button("Undo my last label", key="undo", disabled=not progress["labelled"])
    if undo:
        undone = store.undo_human_label(annotator)  # the pair is claimed first: it is the next one shown
        ss["reset_reopen"] = True
        if undone:
            flash("info", f"Removed your label on pair {undone.pair_id}; it is back in your queue.")
        st.rerun()

    # --- the pairs to judge ---------------------------------------------------------------------------
    st.divider()
    reopened = ss["reopen"] if ss["reopen"] != NONE else None
    if not reopened:
        ahead = store.claim_annotations(annotator, LOOK_AHEAD, queue)
        if not ahead:
            st.success(f"Your queue is empty: every pair has {count(overlap, 'label')} or a label from you.")
            st.stop()
        label_panel(ahead, annotator, CHOICES, SHORTCUTS, HINT)
        st.stop()

    # --- editing a label already saved ----------------------------------------------------------------
    previous = next(lb for lb in mine if lb.pair_id == reopened)
    item = AnnotationItem.for_annotator(store.pair(reopened), annotator, previous.shown_swapped)
    st.info(f"Editing your label ({CHOICES[as_shown(previous.choice, previous.shown_swapped)]}) on this pair.")
    st.text(f"Pair {item.pair_id}")
    st.markdown("**Conversation**")
    show_text(item.prompt, height=300)
    side_by_side(item, "Response", "response")
    st.text_area(
        "Why (optional)",
        value=previous.rationale,
        key=f"rationale_{item.pair_id}",
        height=80,
        max_chars=MAX_NOTE_CHARS,
    )
    chosen = ss.get("chosen", (None, None))
    choice = chosen[1] if chosen[0] == item.pair_id else as_shown(previous.choice, previous.shown_swapped)
    with st.container(horizontal=True, key="choices"):
        for option, label in CHOICES.items():
            st.button(
                label,
                key=f"choose_{option}",
                type="primary" if option == choice else "secondary",
                shortcut=SHORTCUTS[option],
                on_click=choose,
                args=(item.pair_id, option),
            )
    with st.container(horizontal=True, key="submit_row"):
        st.button(
            "Save", key="submit", type="primary", shortcut="Enter", on_click=submit, args=(annotator, item, choice)
        )
        cancel_edit = st.button("Cancel edit", key="cancel_edit")
        st.caption(f"Your choice: {CHOICES[choice]}. Enter saves it.")
    if cancel_edit:
        ss["reset_reopen"] = True
        st.rerun()
