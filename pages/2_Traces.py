"""Trace inspector: filter and page through SL-CAI traces, step through one (prompt → answer → critique 1 →
revision 1 → ...) with word diffs, token counts and timings, and record a verdict on each round.

Only one page of traces is read at a time (LIMIT / OFFSET in DuckDB), so the page stays fast however many
traces are stored.
"""

import hashlib
import math
from dataclasses import asdict, replace

import pandas as pd
import streamlit as st

from cai_core.constitution import ConstitutionError, Principle, parse_constitution
from cai_core.jobs import JobFolder
from cai_core.records import CRITIQUE_VERDICTS, MAX_NOTE_CHARS, REVISION_VERDICTS, StepVerdict, columns
from cai_core.step_flags import FLAGS, flagged_traces, trace_flags
from cai_core.store import Store, TraceFilter
from cai_core.textdiff import share_little
from ui.paging import long_choice
from ui.settings import connect, setup
from ui.text import count, md_escape, show_text, show_word_diff, when

settings = setup("Traces")
ws = settings.workspace
ss = st.session_state

PAGE_SIZE = 20
ANY = "(any)"
UNRATED = "not judged"
FILTERS = {
    "run_id": "Run",
    "constitution_version": "Constitution version",
    "principle_id": "Principle",
    "model": "Model",
}


@st.cache_data(max_entries=32, show_spinner=False)
def principles_in(constitution_text: str) -> dict[str, Principle]:
    """A stored constitution version's principles by id. Parsing one is most of a redraw's time (0.5 s of 1 s on
    this page, with the YAML read twice, once for its line numbers), and a version's text never changes."""
    return {p.id: p for p in parse_constitution(constitution_text).principles}


def step_by(delta: int, steps: int) -> None:
    ss["trace_step"] = max(0, min(steps - 1, ss["trace_step"] + delta))


def one_line(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def verdict_choice(label: str, verdicts: tuple[str, ...], stored: str | None, key: str) -> str | None:
    """A radio of VERDICTS and "not judged", at the one STORED; what is chosen (None: not judged)."""
    options = [UNRATED, *verdicts]
    chosen = st.radio(label, options, index=options.index(stored) if stored else 0, horizontal=True, key=key)
    return None if chosen == UNRATED else chosen


def verdict_form(store, trace_id: str, round_: int, annotator: str) -> None:
    """The annotator's verdict on one round (theirs, when stored, to edit), and other people's."""
    verdicts = store.verdicts(trace_id)
    mine = next((v for v in verdicts if v.round == round_ and v.annotator == annotator), None)
    prefix = hashlib.sha256(f"{trace_id}\0{round_}\0{annotator}".encode()).hexdigest()[:12]
    with st.form("verdict_form"):
        st.text(f"Saved as {annotator}")
        revision_verdict = verdict_choice(
            "The revision, against the answer before it, is",
            REVISION_VERDICTS,
            mine and mine.revision_verdict,
            f"{prefix}_revision",
        )
        critique_verdict = verdict_choice(
            "The critique is", CRITIQUE_VERDICTS, mine and mine.critique_verdict, f"{prefix}_critique"
        )
        note = st.text_area(
            "Note", value=mine.note if mine else "", key=f"{prefix}_note", height=80, max_chars=MAX_NOTE_CHARS
        )
        submitted = st.form_submit_button("Save verdict", key="save_verdict", type="primary")
    if submitted:
        verdict = StepVerdict(
            trace_id,
            round_,
            annotator,
            revision_verdict,
            critique_verdict,
            note.strip(),
        )
        if verdict.revision_verdict is None and verdict.critique_verdict is None:
            st.error("Not saved: judge the revision or the critique (or both) first.")
        else:
            try:
                store.save_verdict(verdict)
            except (ValueError, KeyError) as exc:
                st.error(md_escape(f"Not saved: {exc}"))
            else:
                st.success(f"Saved your verdict on round {round_}.")
                verdicts = store.verdicts(trace_id)
    others = [v for v in verdicts if v.round == round_ and v.annotator != annotator]
    if others:
        st.caption("Other people's verdicts on this round")
        st.dataframe(
            pd.DataFrame([asdict(v) for v in others])[["annotator", "revision_verdict", "critique_verdict", "note"]],
            hide_index=True,
        )


st.title("Traces")

with connect(ws) as store:
    # --- filters and one page of the list ---------------------------------------------------------------
    cols = st.columns([2, 2, 2, 2, 3])
    chosen = {}
    for col, (column, label) in zip(cols[:4], FILTERS.items(), strict=True):
        value = long_choice(  # 200 runs and more: a page of them, and a search box
            col,
            label,
            f"filter_{column}",
            lambda text, limit, offset, column=column: store.distinct(column, text, limit, offset),
            lambda text, column=column: store.count_distinct(column, text),
            first=[ANY],
            persist_state="session",
        )
        chosen[column] = None if value == ANY else value
    text = cols[4].text_input(
        "Search", key="filter_text", placeholder="words in prompts, answers, critiques", persist_state="session"
    )
    cols = st.columns([3, 2, 6])
    flags = cols[0].multiselect(
        "Flagged",
        FLAGS,
        key="filter_flags",
        placeholder="any or none",
        persist_state="session",
        help="Traces with a step flagged so (any of those chosen): an empty or truncated answer, a repetition loop, "
        "a revision that echoes the critique or the revision request, or one identical to the answer before it.",
    )
    verdict = cols[1].selectbox(
        "Verdict",
        [ANY, *REVISION_VERDICTS, *CRITIQUE_VERDICTS],
        format_func=lambda v: v if v == ANY else f"{'revision' if v in REVISION_VERDICTS else 'critique'} {v}",
        key="filter_verdict",
        persist_state="session",
        help="Traces where someone judged a revision better, same or worse, or a critique valid or invalid.",
    )
    trace_filter = TraceFilter(**chosen, text=text.strip() or None, verdict=None if verdict == ANY else verdict)
    if flags:
        # Flags are computed from the steps' text (`cai_core.step_flags`): kept until the filter or the steps change.
        asked = (trace_filter, tuple(flags), store.counts()["trace_steps"])
        if ss.get("flagged_for") != asked:
            ss["flagged_for"], ss["flagged"] = asked, flagged_traces(store, flags, trace_filter)
        trace_filter = replace(trace_filter, trace_ids=ss["flagged"])

    total = store.count_traces(trace_filter)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if ss.get("traces_filter") != trace_filter:  # a new filter starts at its first page
        ss["traces_filter"], ss["traces_page"] = trace_filter, 1
    ss["traces_page"] = min(ss.get("traces_page", 1), pages)
    cols = st.columns([5, 1], vertical_alignment="bottom")
    page = cols[1].number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="traces_page")
    cols[0].caption(f"{count(total, 'trace')} match. Newest first, {PAGE_SIZE} a page.")
    offset = (page - 1) * PAGE_SIZE
    rows = store.trace_page(trace_filter, limit=PAGE_SIZE, offset=offset)
    if rows.empty:
        st.info("No traces match. Start a run on the Generate page; its traces appear here as they are written.")
        st.stop()

    st.dataframe(
        pd.DataFrame(
            {
                "#": range(offset + 1, offset + len(rows) + 1),
                "prompt": rows["prompt"],
                "category": rows["category"],
                "rounds": rows["rounds"],
                "model": rows["model"],
                "constitution": rows["constitution_name"] + " " + rows["constitution_version"],
                "run": rows["run_id"],
                "created": rows["created_at"].map(when),
            }
        ),
        hide_index=True,
        height=min(38 + 35 * len(rows), 330),
    )
    # Labels name the trace, not its place in the list: a label that changed while the choice stayed the
    # same would keep showing the old text.
    labels = {
        row.trace_id: one_line(row.prompt) + (f" (sample {row.sample_index})" if row.sample_index else "")
        for row in rows.itertuples()
    }
    if ss.get("trace_id") not in labels:
        ss["trace_id"] = next(iter(labels))
    trace_id = st.selectbox("Open trace", list(labels), format_func=labels.get, key="trace_id")

    # --- one trace, step by step ------------------------------------------------------------------------
    trace, steps = store.trace(trace_id)
    if not steps:  # a job writes a trace just before its first answer
        st.info("This trace's first answer has not been written yet.")
        st.stop()
    by_round = {step.round: step for step in steps}
    try:
        principles = principles_in(store.constitution_text(trace.constitution_version))
    except (KeyError, ConstitutionError):
        principles = {}
    principle_names = {pid: p.name for pid, p in principles.items()}
    run_folder = JobFolder(ws.runs_dir / trace.run_id)
    spec = run_folder.spec if (run_folder.path / "run.json").exists() else {}
    flags_by_round = trace_flags(
        steps,
        spec.get("config", {}).get("max_new_tokens"),
        {pid: p.revision_request for pid, p in principles.items()},
    )

    def show_flags(step) -> None:
        """What went wrong in this step, if anything (`cai_core.step_flags`)."""
        if flags_by_round.get(step.round):
            st.warning(f"Flagged: {', '.join(flags_by_round[step.round])}", icon=":material/flag:")

    stops = [("Prompt", 0, "prompt"), ("Answer", 0, "answer")]
    for step in steps:
        if step.round > 0:
            stops += [
                (f"Critique {step.round}", step.round, "critique"),
                (f"Revision {step.round}", step.round, "revision"),
            ]

    if ss.get("trace_step_of") != trace_id:  # another trace starts at its prompt
        ss["trace_step_of"], ss["trace_step"] = trace_id, 0
    ss["trace_step"] = min(ss.get("trace_step", 0), len(stops) - 1)
    position = ss["trace_step"]

    st.divider()
    st.text(
        f"Trace {trace.trace_id} · model {trace.model} · constitution {trace.constitution_name} "
        f"({trace.constitution_version}) · {count(max(by_round), 'round')}"
    )
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button(
            "Previous",
            key="step_previous",
            icon=":material/arrow_back:",
            on_click=step_by,
            args=(-1, len(stops)),
            disabled=position == 0,
        )
        st.button(
            "Next",
            key="step_next",
            icon=":material/arrow_forward:",
            on_click=step_by,
            args=(1, len(stops)),
            disabled=position == len(stops) - 1,
        )
        st.radio(
            "Step",
            range(len(stops)),
            format_func=lambda i: stops[i][0],
            horizontal=True,
            key="trace_step",
            label_visibility="collapsed",
        )

    label, round_, kind = stops[position]
    step, before = by_round.get(round_), by_round.get(round_ - 1)
    if round_ > 0:
        name = principle_names.get(step.principle_id, "principle not found in that constitution version")
        st.text(f"Round {round_} principle: {name} ({step.principle_id or ''})")
    if kind == "prompt":
        st.markdown("**Prompt**")
        show_text(trace.prompt)
        st.text(f"Prompt {trace.prompt_id}, category {trace.category or 'none'}, sample {trace.sample_index}")
    elif kind == "answer":
        st.markdown("**Initial answer**")
        show_flags(step)
        show_text(step.response)
        st.caption(f"{step.prompt_tokens} prompt tokens · {step.response_tokens} answer tokens · {step.seconds:.2f} s")
    elif kind == "critique":
        st.markdown(f"**Critique {round_}**")
        show_text(step.critique)
        with st.expander("The answer it critiques"):
            show_text(before.response if before else "")
        st.caption(f"{step.prompt_tokens} prompt tokens · {step.critique_tokens} critique tokens")
    elif step.stopped:
        st.info("The critique asked for no change, so this round has no revision and the trace ends here.")
    else:
        show_flags(step)
        earlier = before.response if before else ""
        if share_little(earlier, step.response):  # a rewrite, not an edit: a word diff of it would be noise
            st.markdown(f"**Revision {round_}**, beside the answer before it (they share little)")
            left, right = st.columns(2)
            with left:
                show_text(earlier)
            with right:
                show_text(step.response)
        else:
            st.markdown(f"**Revision {round_}**, against the answer before it (green: added, red: removed)")
            show_word_diff(earlier, step.response)
            with st.expander("The revision as plain text"):
                show_text(step.response)
        st.caption(f"{step.response_tokens} revision tokens · {step.seconds:.2f} s for the critique and revision")

    # --- the human verdict on this round ----------------------------------------------------------------
    if round_ > 0:
        st.divider()
        st.subheader(f"Your verdict on round {round_}")
        # The form's widgets are keyed by the annotator, so it shows their verdict when there is one; so the name
        # (where no login gives it) comes first, and the form only once it is there: a name typed after choosing
        # would switch the form to that name's verdict under a half-made choice.
        annotator = settings.user or st.text_input("Your name", key="annotator", persist_state="session").strip()
        if annotator:
            verdict_form(store, trace_id, round_, annotator)
        else:
            st.info("Type your name to judge this round: your verdicts are kept under it.")

    # --- every verdict: counts and export ---------------------------------------------------------------
    st.divider()
    st.subheader("All verdicts")
    counts = store.verdict_counts()
    if counts.empty:
        st.caption("No verdicts yet.")
    else:
        cols = st.columns(len(counts))
        for col, row in zip(cols, counts.itertuples(), strict=True):
            col.metric(f"{row.aspect.capitalize()}: {row.verdict}", int(row.n))

    def verdicts_csv() -> str:
        """Every verdict, read when the button is clicked (on a thread of its own): a redraw reads none of them."""
        with Store.open(ws) as own:
            every = own.verdicts()
        return pd.DataFrame([asdict(v) for v in every], columns=columns(StepVerdict)).to_csv(index=False)

    st.download_button(
        "Download verdicts (CSV)",
        verdicts_csv,
        file_name="verdicts.csv",
        mime="text/csv",
        key="export_verdicts",
        disabled=counts.empty,
    )
