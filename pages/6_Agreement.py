"""Agreement: do the AI judge's labels agree with people's? Every figure comes from
`cai_core.agreement.dashboard`, as `cai agreement` prints them; this page only draws them.

It also audits the judge (`cai_core.judge_verdict`, `judge_audit`): the verdict, calibrations (fit one with
the label run's own judge, read every figure through one), the per-principle audit, and how the reweighted
agreement of the disagreement-first annotation queue tightens as its labels come in.

It also starts AI labelling runs: the label job (`feedback.LABEL`) snapshots the pairs and the constitution into a
job folder and the run goes on in its own process (`cai resume RUN`, as `cai label --background` starts it),
with the shared job controls of the Generate and Train pages.
"""

import dataclasses
import time

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cai_core import jobs
from cai_core.agreement import dashboard, label_facets
from cai_core.constitution import list_constitutions
from cai_core.feedback import LabelConfig
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.judge_audit import CalibrateConfig, queue_tightening
from cai_core.judge_calibration import CALIBRATION_STAGES
from cai_core.label_gate import GateRule, gate, load_rule, save_rule
from ui.agreement import agreement_bars, pick_many, shown, table
from ui.job_controls import ACTIVE, job_cards, launch_job, start_from_form, starter
from ui.settings import connect, follow_context, setup
from ui.text import count, md_escape, show_flash, show_text, when

settings = setup("Agreement")
ws = settings.workspace
ss = st.session_state

ALL_SOURCES = "all"
NO_CALIBRATION = "none: the judge's own probabilities"
SHOWN_LABEL_RUNS = 5
DASHBOARD_SECONDS = 5  # the least time between two redraws of the dashboard for labels that have landed


def label_jobs() -> list[JobFolder]:
    return list_job_folders(ws.runs_dir, kinds=("label",))


def labels_spooled(latest: list[JobFolder] | None = None) -> int:
    """How many labels the latest label runs have written so far (their progress counts what they spooled)."""
    return sum(job.progress().done for job in (label_jobs()[:SHOWN_LABEL_RUNS] if latest is None else latest))


def labels_landed() -> bool:
    """Whether the label runs have written labels since the dashboard was drawn, and it is time to draw it again:
    the whole page is then redrawn, which takes them in (`connect` ingests them). At most every
    DASHBOARD_SECONDS, so that a fast run does not keep the whole page busy redrawing."""
    return (
        labels_spooled() > ss.get("labels_drawn", 0)
        and time.monotonic() - ss.get("dashboard_drawn_at", 0.0) >= DASHBOARD_SECONDS
    )


def calibration_jobs() -> list[JobFolder]:
    return list_job_folders(ws.runs_dir, kinds=("calibrate",))


def describe_calibration(job: JobFolder, progress) -> tuple[str, str]:
    return (
        f"label run {job.spec['config']['label_run']} · judge {job.spec['model']} · started "
        f"{when(job.spec['created_at'])}",
        f"{progress.done}/{progress.total} steps: each principle's prior, then the fit",
    )


def describe_labelling(job: JobFolder, progress) -> tuple[str, str]:
    spec, config = job.spec, job.spec.get("config") or {}
    constitution_name = (spec.get("constitution") or {}).get("name", "none")
    return (
        f"judge {spec.get('model')} · constitution {constitution_name} · "
        f"strategy {config.get('strategy', '?')} · started {when(spec['created_at'])}",
        f"{progress.done}/{count(progress.total, 'label')}",
    )


def label_launcher(store) -> None:
    """The form that starts a labelling run (the `cai label` options that matter), and the runs below it."""
    files = list_constitutions(ws.constitutions_dir)
    with st.form("label_form"):
        cols = st.columns(3)
        follow_context("constitution", "label_constitution", [p.name for p in files])
        constitution = cols[0].selectbox("Constitution", [p.name for p in files], key="label_constitution")
        judge = cols[1].text_input(
            "Judge model",
            key="label_model",
            placeholder=f"{settings.model} (the sidebar's model)",
            help="Empty: the model set in the sidebar. Or a model folder inside the workspace, a hub id, or "
            "`openai:MODEL@URL` on a listed endpoint.",
        )
        strategy = cols[2].selectbox(
            "Principles",
            ("sample", "ensemble"),
            format_func=lambda s: {"sample": "one sampled per pair", "ensemble": "all, averaged"}[s],
            key="label_strategy",
        )
        cols = st.columns(3)
        source = cols[0].selectbox("Pairs from", (ALL_SOURCES, "import", "sampled", "sl-cai"), key="label_source")
        limit = cols[1].number_input("Pairs to label", 1, None, value=None, placeholder="all", key="label_limit")
        cols[2].checkbox("Reason first (chain of thought)", key="label_cot")
        calibration = st.selectbox(
            "Calibrate the labels as they are made",
            [NO_CALIBRATION, *store.calibrations().calibration_id],
            key="label_calibration",
            help="A stored calibration of this judge and constitution version: each label keeps its calibrated "
            "P(a better) beside the raw one, and exports and training read the calibrated one.",
        )
        submitted = st.form_submit_button(
            "Label in the background", key="label_start", type="primary", disabled=settings.read_only
        )
    if submitted:
        start_from_form(
            ws,
            "label",
            lambda: LabelConfig(
                constitution=str((ws.constitutions_dir / constitution).resolve()) if constitution else "",
                model=settings.model_spec(judge.strip() or settings.model),
                strategy=strategy,
                cot=ss["label_cot"],
                source=None if source == ALL_SOURCES else source,
                limit=limit,
                calibration=None if calibration == NO_CALIBRATION else calibration,
            ),
            "Its labels join the dashboard as they land.",
            # the page's connection hands the pairs and the calibration over: the job snapshots them and never
            # opens the database
            lambda config: {"pairs": store.pairs(source=config.source, limit=config.limit), "store": store},
        )
    job_cards(
        label_jobs,
        starter(ws),
        describe_labelling,
        empty="No labelling runs yet.",
        refresh_key="refresh_label_runs",
        redraw_page=labels_landed,
        per_page=SHOWN_LABEL_RUNS,
    )


st.title("Agreement")
show_flash()

# counted before `connect` ingests: a label spooled in between is taken in now and redraws the page once more
latest_label_jobs = label_jobs()[:SHOWN_LABEL_RUNS]  # one listing for both (200 run.json files read a listing)
ss["labels_drawn"], ss["dashboard_drawn_at"] = labels_spooled(latest_label_jobs), time.monotonic()
with connect(ws) as store:
    # People's labels come in on the Annotate page, or from a file on the Data page: one import, one owner.
    st.page_link(
        "pages/9_Data.py",
        label="Import people's labels from a file (hh-rlhf, CSV, JSONL) on the Data page",
        icon=":material/upload:",
    )

    # --- AI labelling runs (what `cai label --background` does) -------------------------------------------
    labelling = any(job.progress().status in ACTIVE for job in latest_label_jobs)
    with st.expander("Label pairs with the AI judge", expanded=labelling or store.latest_label_run() is None):
        label_launcher(store)

    # --- filters: which AI labels the figures read, across label runs -------------------------------------
    cols = st.columns([3, 2, 2, 2, 1, 1])
    tie_band = float(cols[4].number_input("AI tie band ±", 0.0, 0.45, 0.05, step=0.01, key="tie_band"))
    bins = int(cols[5].number_input("Calibration bins", 1, 50, 10, key="bins"))
    facets = label_facets(store)
    if not facets.run_ids:
        st.info("No AI labels yet: start a labelling run above first.")
        st.stop()
    latest = store.latest_label_run()
    with cols[0]:
        run_ids = pick_many("Label runs", facets.run_ids, "filter_runs", default=[latest])
    with cols[1]:
        judge_models = pick_many("Judge models", facets.judge_models, "filter_judge_models")
    with cols[2]:
        versions = pick_many("Constitution versions", facets.constitution_versions, "filter_versions")
    with cols[3]:
        principles = pick_many("Principles", facets.principles, "filter_principles")
    calibrations = store.calibrations()
    # the calibration this session started, once its job has ended and the store has taken it in: show it (a
    # widget's value can only be set before it is drawn)
    if ss.get("calibrating") in set(calibrations.calibration_id):
        ss["calibration"] = ss.pop("calibrating")
    cols = st.columns([3, 2])
    calibration = cols[0].selectbox(
        "Read the labels through a calibration",
        [NO_CALIBRATION, *calibrations.calibration_id],
        key="calibration",
        help="A calibration divides out the judge's prior for the first-shown answer and applies a Platt fit; "
        "it keeps the labels of its own judge model and constitution version only.",
    )
    calibration = None if calibration == NO_CALIBRATION else calibration
    fit_run = cols[1].selectbox("Label run to calibrate", facets.run_ids, key="calibrate_run")
    if cols[1].button(
        "Fit a calibration",
        key="fit_calibration",
        help="As `cai calibrate --run-id RUN --background`: asks the run's judge for its prior on content-free "
        "pairs, one principle at a time, then fits Platt. It runs as a job: its card shows its progress.",
        disabled=settings.read_only,
    ):
        try:
            job = jobs.prepare("calibrate", CalibrateConfig(label_run=fit_run), ws, store=store)
        except (OSError, ValueError) as exc:
            st.error(md_escape(f"Not calibrated: {exc}"))
        else:
            ss["calibrating"] = job.run_id
            if job.run_id in set(calibrations.calibration_id):
                st.info(md_escape(f"{job.run_id} is fitted already on these labels: choose it above."))
            elif not launch_job(job, starter(ws)):
                st.info(md_escape(f"{job.run_id} is already running."))
    if latest_calibrations := calibration_jobs()[:SHOWN_LABEL_RUNS]:
        with st.expander("Calibration runs", expanded=any(j.progress().status in ACTIVE for j in latest_calibrations)):
            job_cards(
                calibration_jobs,
                starter(ws),
                describe_calibration,
                empty="",
                refresh_key="refresh_calibrations",
                per_page=SHOWN_LABEL_RUNS,
            )
    board = dashboard(
        store,
        run_ids=run_ids,
        judge_models=judge_models,
        constitution_versions=versions,
        principles=principles,
        tie_band=tie_band,
        bins=bins,
        calibration=calibration,
    )
    if board.by_run.empty:
        st.info("No AI label matches these filters.")
        st.stop()
    queue_run = run_ids[0] if len(run_ids) == 1 else latest
    tightening = queue_tightening(store, queue_run)
    gate_rule = load_rule(ws)
    gated = gate(store, queue_run, gate_rule)

selected, overall = board.by_run, board.overall

# --- is the judge an instrument to trust? -------------------------------------------------------------
verdict = board.verdict
# a finding about the judge, not a failure of the page: a warning, never an error
show = {"trustworthy": st.success, "weak": st.warning, "unreliable": st.warning}.get(verdict.name, st.info)
show(md_escape(verdict.headline()), icon=":material/gavel:" if verdict.name != "unreliable" else ":material/block:")
with st.expander("Why, against which thresholds, and what to do", expanded=verdict.name != "trustworthy"):
    table(verdict.table(), key="verdict_table")
    for advice in verdict.advice:
        st.text(f"• {advice}")

# --- calibration: before and after, on held-out human labels -----------------------------------------
if calibration is not None:
    chosen = calibrations[calibrations.calibration_id == calibration].iloc[0]
    report = chosen.report
    st.subheader("Calibration")
    st.caption(
        f"{calibration}: judge {chosen.judge_model} · constitution version {chosen.constitution_version} · fitted "
        f"on {report['n_fit']} human labels of run {chosen.run_id}; the figures below are on the "
        f"{report['n_held_out']} held out (a hash of the pair id keeps them out of the fit). Every other figure on "
        "this page now reads the labels through it, the fitted pairs included."
    )
    table([{"stage": stage, **report[stage]} for stage in CALIBRATION_STAGES], key="calibration_report")
    st.text(
        "Prior P(first shown) on content-free pairs, order 1 / order 2: "
        + ", ".join(f"{p} {a:.3f} / {b:.3f}" for p, (a, b) in sorted(chosen.priors.items()))
        + f" · Platt: sigmoid({chosen.slope:.3f} logit P + {chosen.bias:.3f})"
    )

# --- headline figures ---------------------------------------------------------------------------------


def listed(column: str) -> str:
    return ", ".join(str(v) for v in sorted(selected[column].dropna().astype(str).unique()))


st.subheader("One label run" if len(selected) == 1 else f"{len(selected)} label runs")
st.text(
    f"Run {listed('run_id')} · judge {listed('judge_model')} · constitution version "
    f"{listed('constitution_version')} · strategy {listed('strategy')} · principles {', '.join(principles) or 'all'} · "
    f"{int(selected.pairs.sum())} labelled pairs, {int(selected.failed.sum())} failed"
)
metrics = [
    ("Agreement (no ties)", overall.get("agreement"), f"{int(overall.get('labels_no_ties', 0))} labels"),
    ("Agreement (with ties)", overall.get("agreement_with_ties"), f"{int(overall.get('labels_with_ties', 0))} labels"),
    ("Cohen's kappa", overall.get("kappa"), None),
    ("Kappa (with ties)", overall.get("kappa_with_ties"), None),
    ("Inter-human alpha", board.alpha.alpha, f"{board.alpha.pairs} pairs with 2+ labels"),
    ("Position consistency", overall.get("position_consistency"), None),
    ("First-position rate", overall.get("first_position_rate"), "0.5 is unbiased"),
    (f"ECE ({bins} bins)", board.reliability.ece, f"{board.reliability.n} labels"),
]
for i in range(0, len(metrics), 4):
    cols = st.columns(4)
    for col, (label, value, note) in zip(cols, metrics[i : i + 4], strict=False):
        col.metric(label, shown(value), note, delta_color="off", delta_arrow="off")

# --- charts -------------------------------------------------------------------------------------------
st.subheader("By principle and by judge model")
cols = st.columns(2)
agreement_bars(
    cols[0],
    board.by_principle,
    "principle_id",
    "Agreement by principle",
    "chart_principle",
    "No per-principle agreement to show.",
)
agreement_bars(
    cols[1], board.by_model, "judge_model", "Agreement by judge model", "chart_model", "No per-model agreement to show."
)

cols = st.columns(2)
bins_frame = board.reliability.bins.dropna(subset=["mean_p"])
reliability = go.Figure()
reliability.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dash"}))
reliability.add_trace(
    go.Scatter(x=bins_frame["mean_p"], y=bins_frame["frac_a"], mode="lines+markers", name="judge", text=bins_frame["n"])
)
reliability.update_layout(
    title="Reliability: predicted P(a better) vs people choosing a",
    xaxis_title="mean predicted P(a better)",
    yaxis_title="fraction of people choosing a",
)
cols[0].plotly_chart(reliability, key="chart_reliability")
cols[1].plotly_chart(
    px.imshow(
        board.confusion,
        text_auto=True,
        labels={"x": "AI verdict", "y": "human label", "color": "labels"},
        title="Confusion (with ties)",
    ),
    key="chart_confusion",
)

st.subheader("Per-principle audit: which principles to rewrite")
st.caption(
    "Flip rate: how often its choice changes when the answers swap places. Position bias: the first-position "
    "rate's distance from 0.5. Revision P(better): how often its SL-CAI revisions beat the answer before them, as "
    "judged by a rounds evaluation (the Evaluate page; 0.5: no change). Finding: what fails the verdict's thresholds."
)
if board.principle_audit.empty:
    st.caption("No per-principle labels to audit.")
else:
    table(board.principle_audit, key="principle_audit")

st.subheader("Label gate: what reaches training")
st.caption(
    f"Run {queue_run}: each principle's AI labels are kept, down-weighted (by 2a - 1 for agreement a) or dropped by "
    "its agreement with people, and a principle with too few human labels is marked unjudged. Exports, reward "
    "models and DPO runs that gate read this rule."
)
st.write(md_escape(f"{gated.summary()}."))
table(gated.table[["principle_id", "decision", "weight", "reason"]], key="label_gate")
with st.form("gate_rule"):
    cols = st.columns(3)
    fields = {f.name: f.metadata["help"] for f in dataclasses.fields(GateRule)}
    min_human_labels = cols[0].number_input(
        "Human labels needed",
        1,
        None,
        gate_rule.min_human_labels,
        key="gate_min_labels",
        help=fields["min_human_labels"],
    )
    keep_agreement = cols[1].number_input(
        "Keep at agreement", 0.5, 1.0, gate_rule.keep_agreement, 0.05, key="gate_keep", help=fields["keep_agreement"]
    )
    unjudged = cols[2].selectbox(
        "Unjudged principles",
        ("keep", "drop"),
        ("keep", "drop").index(gate_rule.unjudged),
        key="gate_unjudged",
        help=fields["unjudged"],
    )
    if st.form_submit_button("Save the rule", key="gate_save", disabled=settings.read_only):
        save_rule(ws, GateRule(int(min_human_labels), float(keep_agreement), unjudged))
        st.rerun()

st.subheader("Disagreement-first annotation")
if tightening.empty:
    st.caption(
        f"No labels yet from the disagreement-first queue of {queue_run}: choose that mode on the Annotate page. "
        "It serves first the pairs where the judge flips under swap, P is near 0.5, principles or people disagree."
    )
else:
    st.caption(
        "The queue serves contested pairs first, so the plain mean of its labels over-represents hard pairs. The "
        "estimate weighs each labelled pair by 1/π, π being its chance to be among the first n served (sequential "
        "Poisson sampling on frozen contest scores, every pair with a floor weight), which makes it unbiased for "
        "the whole pool (the Hajek estimator; interval from its linearised variance). The figures above count every "
        "label alike, the queue's included."
    )
    latest_estimate = tightening.iloc[-1]
    cols = st.columns(3)
    cols[0].metric(
        "Queue agreement, reweighted",
        shown(latest_estimate.estimate),
        f"95% [{latest_estimate.low:.2f}, {latest_estimate.high:.2f}]",
        delta_color="off",
        delta_arrow="off",
    )
    cols[1].metric("Plain mean (biased)", shown(latest_estimate.plain_mean))
    cols[2].metric("Pairs labelled from the queue", int(latest_estimate.labelled_pairs))
    chart = go.Figure()
    chart.add_trace(
        go.Scatter(
            x=list(tightening.labelled_pairs) + list(tightening.labelled_pairs[::-1]),
            y=list(tightening.high) + list(tightening.low[::-1]),
            fill="toself",
            line={"width": 0},
            name="95% interval",
        )
    )
    chart.add_trace(go.Scatter(x=tightening.labelled_pairs, y=tightening.estimate, name="reweighted estimate"))
    chart.add_trace(
        go.Scatter(x=tightening.labelled_pairs, y=tightening.plain_mean, name="plain mean", line={"dash": "dot"})
    )
    chart.update_layout(
        title=f"Agreement of {queue_run} as disagreement-first labels come in",
        xaxis_title="pairs labelled from the queue",
        yaxis_title="agreement with people",
        yaxis_range=[0, 1],
    )
    st.plotly_chart(chart, key="chart_queue")

with st.expander("Each run, judge model and constitution version in the selection"):
    table(selected)
    table(board.by_version)

# --- disagreements ------------------------------------------------------------------------------------
st.subheader("Disagreements")
found = board.disagreements
if found.empty:
    st.caption("No pair where this run's verdict and a person's a/b label differ.")
else:
    index = st.selectbox(
        f"{len(found)} disagreements, the most confident AI first",
        range(len(found)),
        format_func=lambda i: (
            f"{found.pair_id[i]} · {found.annotator[i]} said {found.human[i]}, AI {found.ai[i]} "
            f"(P(a) {found.p_a[i]:.2f})"
        ),
        key="disagreement",
    )
    case = found.iloc[index]
    cols = st.columns(5)
    cols[0].metric("Person", str(case.human))
    cols[1].metric("AI", str(case.ai))
    cols[2].metric("P(a better)", shown(case.p_a))
    cols[3].metric("P(A), a shown first", shown(case.p_order1))
    cols[4].metric("P(A), b shown first", shown(case.p_order2))
    st.text(f"Annotator {case.annotator} · run {case.run_id} · principle(s) {case.principles} · pair {case.pair_id}")
    st.markdown("**Conversation**")
    show_text(case.prompt, height=300)
    left, right = st.columns(2)
    with left:
        st.markdown("**Response a**")
        show_text(case.response_a)
    with right:
        st.markdown("**Response b**")
        show_text(case.response_b)
    if case.rationale:
        st.markdown("**The person's rationale**")
        st.text(case.rationale)
