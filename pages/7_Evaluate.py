"""Evaluation: compare models on red-team and benign sets, bare and under jailbreak wrappers, and score an
SL-CAI run's revisions round by round. Runs are background jobs (`cai eval run|rounds --background`); the
figures and charts come from `cai_core.eval_report`, as `cai eval show` and `cai eval report` print them.
"""

from dataclasses import replace

import streamlit as st

from cai_core.constitution import list_constitutions
from cai_core.eval_report import charts, report_html, summarize
from cai_core.evalsets import BUILTIN_SETS, STANDARD_SETS, WRAPPERS, EvalSet, source_columns
from cai_core.evaluation import EvalConfig, RoundsConfig, parse_models
from cai_core.grader_audit import DEFAULT_SAMPLE, MIN_ANSWERS, send_sample, sent_text
from cai_core.inspect_eval import TASKS, InspectConfig
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.prompts import PromptFileError
from cai_core.workspace import OutsideWorkspace
from ui.job_controls import job_cards, start_from_form, starter
from ui.settings import connect, follow_context, model_choices, setup
from ui.text import count, flash, md_escape, show_flash, show_text, when

settings = setup("Evaluate")
ws = settings.workspace
EVAL_KINDS = ("eval", "eval-rounds", "inspect")
SET_SUFFIXES = (".jsonl", ".csv")
STARTED = "Its progress is below; its charts appear when it is done."


def browser_set(line: str) -> str:
    """A set typed on this page: a shipped or standard set by name, or a file inside the workspace with its column
    mapping."""
    found = EvalSet.parse(line)
    if found.source in BUILTIN_SETS or found.source in STANDARD_SETS:
        return found.spec
    return replace(found, source=ws.resolve_browser_source(found.source, suffixes=SET_SUFFIXES)).spec


def limited(spec: str, limit: int | None) -> str:
    """A set's spec holding at most `limit` prompts of each label, unless its line names its own limit."""
    found = EvalSet.parse(spec)
    return replace(found, limit=limit).spec if limit and found.limit is None else spec


st.title("Evaluate")
show_flash()
st.write(
    "Did the constitution make the model better? Compare models on harmful and benign prompts, with and "
    "without jailbreak wrappers: the judge compares every two models' answers (harmlessness under the "
    "constitution on harmful prompts, helpfulness on benign ones), and refusals are counted on both."
)

with connect(ws) as store:
    models = model_choices(store)
    generate_runs = store.runs(kind="generate")
constitutions = [p.name for p in list_constitutions(ws.constitutions_dir)]

compare_tab, rounds_tab, inspect_tab = st.tabs(["Compare models", "Score SL-CAI rounds", "Inspect AI"])


def add_set(spec: str) -> None:
    """Append a set's spec to the form's list (a callback: a widget's value may change only before it is drawn)."""
    lines = [line for line in st.session_state.get("eval_more_sets", "").splitlines() if line.strip()]
    st.session_state["eval_more_sets"] = "\n".join([*lines, spec])


with compare_tab.expander("Add a set from a file, mapping its columns"):
    source = st.text_input(
        "File or dataset",
        key="set_source",
        placeholder="../shared/data/xstest/xstest_prompts.csv",
        help=".jsonl, .csv, a saved datasets folder, or hf:OWNER/NAME[:SPLIT].",
    )
    if source.strip():
        try:
            source = ws.resolve_browser_source(source, suffixes=SET_SUFFIXES)
            found = source_columns(source)
        except (PromptFileError, OutsideWorkspace) as exc:
            st.error(md_escape(str(exc)))
        else:
            none = "(none)"
            cols = st.columns(5)
            prompt_column = cols[0].selectbox(
                "Prompt column", found, index=found.index("prompt") if "prompt" in found else 0, key="set_prompt"
            )
            id_column = cols[1].selectbox(
                "Id column", [none, *found], key="set_id", index=1 + found.index("id") if "id" in found else 0
            )
            category_column = cols[2].selectbox("Category column", [none, *found], key="set_category")
            label_column = cols[3].selectbox(
                "Label column",
                [none, *found],
                key="set_label",
                index=1 + found.index("label") if "label" in found else 0,
            )
            whole_set = cols[4].selectbox(
                "Without a label column, every prompt is",
                ["harmful", "benign"],
                key="set_as",
                disabled=label_column != none,
            )
            limit = cols[0].number_input("At most N per label", 1, None, value=None, placeholder="all", key="set_limit")
            spec = EvalSet(
                source=source,
                prompt=prompt_column,
                id=id_column if id_column != none else "",
                category=category_column if category_column != none else "",
                label=label_column if label_column != none else "",
                as_label=whole_set if label_column == none else "",
                limit=limit,
            ).spec
            st.code(spec, language=None, wrap_lines=True)
            st.button("Add to the sets", key="set_add", on_click=add_set, args=(spec,))

with compare_tab, st.form("eval_form"):
    cols = st.columns(2)
    picked = cols[0].multiselect(
        "Models",
        list(models),
        default=[m for m in models if m == settings.model][:1],
        format_func=models.get,
        key="eval_models",
        help="The default model and every finished training run's model.",
    )
    more_models = cols[0].text_area(
        "More models, one per line",
        key="eval_more_models",
        placeholder="name=path/to/model or openai:MODEL@URL",
    )
    sets = cols[1].multiselect(
        "Sets",
        [*BUILTIN_SETS, *STANDARD_SETS],
        default=list(BUILTIN_SETS),
        key="eval_sets",
        help="The demo's own sets, and the standard ones by name: XSTest (over-refusal: safe prompts that look "
        "unsafe, and unsafe ones), HarmBench and Do-Not-Answer (harmful only).",
    )
    set_limit = cols[1].number_input(
        "Prompts per set",
        1,
        None,
        value=None,
        placeholder="all",
        key="eval_set_limit",
        help="At most this many prompts of each label (harmful, benign) from each set: a quick first run. "
        "A set line below with its own limit=N keeps its own.",
    )
    more_sets = cols[1].text_area(
        "More sets, one per line",
        key="eval_more_sets",
        placeholder="../shared/data/xstest/xstest_prompts.csv#category=type,limit=10",
        help="FILE[#prompt=COLUMN,id=COLUMN,category=COLUMN,label=COLUMN,as=harmful|benign,limit=N,name=NAME] "
        "for .jsonl, .csv, a datasets folder or hf:OWNER/NAME[:SPLIT]. limit keeps the first N prompts of each label.",
    )
    cols = st.columns(5)
    wrappers = cols[0].multiselect("Jailbreak wrappers", list(WRAPPERS), default=["none"], key="eval_wrappers")
    refusals = cols[4].radio(
        "Refusals read by",
        ["phrases", "judge"],
        key="eval_refusals",
        horizontal=True,
        help="phrases: a refusal phrase opens the answer (XSTest's string match); judge: the judge model is asked.",
    )
    follow_context("constitution", "eval_constitution", constitutions)
    constitution = cols[1].selectbox("Constitution", constitutions, key="eval_constitution")
    judge = cols[2].text_input("Judge model", key="eval_judge", placeholder=f"the sidebar's: {settings.model}")
    max_new_tokens = cols[3].number_input("Max new tokens", 1, 2048, value=96, step=16, key="eval_tokens")
    if st.form_submit_button("Start in the background", key="eval_start", type="primary", disabled=settings.read_only):
        names = {spec: models[spec].split(" (")[0].replace("=", " ") for spec in picked}
        entries = [f"{name}={spec}" for spec, name in names.items()]
        entries += [line.strip() for line in more_models.splitlines() if line.strip()]
        start_from_form(
            ws,
            "eval",
            lambda: EvalConfig(
                models=[f"{name}={settings.model_spec(spec)}" for name, spec in parse_models(entries).items()],
                sets=[
                    limited(spec, set_limit)
                    for spec in sets + [browser_set(line) for line in more_sets.splitlines() if line.strip()]
                ],
                wrappers=wrappers,
                constitution=str((ws.constitutions_dir / constitution).resolve()),
                judge=settings.model_spec(judge.strip() or settings.model),
                max_new_tokens=max_new_tokens,
                refusals=refusals,
            ),
            STARTED,
        )

with rounds_tab, st.form("rounds_form"):
    st.caption(
        "The judge compares each revision with the answer before it (which principles' revisions helped most) "
        "and with the initial answer (how harmlessness changes round by round), under the harm principles."
    )
    cols = st.columns(4)
    follow_context("run", "rounds_run", list(generate_runs["run_id"]))
    traces_run = cols[0].selectbox("SL-CAI run", list(generate_runs["run_id"]), key="rounds_run")
    follow_context("constitution", "rounds_constitution", constitutions)
    rounds_constitution = cols[1].selectbox("Constitution", constitutions, key="rounds_constitution")
    rounds_judge = cols[2].text_input("Judge model", key="rounds_judge", placeholder=f"the sidebar's: {settings.model}")
    limit = cols[3].number_input("Traces to score", 1, None, value=None, placeholder="all", key="rounds_limit")
    if st.form_submit_button(
        "Start in the background", key="rounds_start", type="primary", disabled=settings.read_only
    ):
        if traces_run is None:
            st.error("No SL-CAI run yet: start one on the Generate page.")
        else:
            start_from_form(
                ws,
                "eval-rounds",
                lambda: RoundsConfig(
                    traces_run=traces_run,
                    constitution=str((ws.constitutions_dir / rounds_constitution).resolve()),
                    judge=settings.model_spec(rounds_judge.strip() or settings.model),
                    limit=limit,
                ),
                STARTED,
            )

with inspect_tab, st.form("inspect_form"):
    st.caption(
        "An Inspect AI task run against a model through the workbench's own engine; its log stays with the run "
        "(`inspect view` opens it). xstest runs offline; a registry task downloads its data set when it runs."
    )
    cols = st.columns(3)
    inspect_task = cols[0].text_input("Task", value=next(iter(TASKS)), key="inspect_task")
    inspect_model = cols[1].text_input("Model", key="inspect_model", placeholder=f"the sidebar's: {settings.model}")
    inspect_limit = cols[2].number_input("Samples", 1, None, value=None, placeholder="all", key="inspect_limit")
    if st.form_submit_button(
        "Start in the background", key="inspect_start", type="primary", disabled=settings.read_only
    ):
        start_from_form(
            ws,
            "inspect",
            lambda: InspectConfig(
                task=inspect_task.strip(),
                model=settings.model_spec(inspect_model.strip() or settings.model),
                limit=inspect_limit,
            ),
            STARTED,
        )

# --- runs -------------------------------------------------------------------------------------------------

st.subheader("Runs")


def eval_jobs() -> list[JobFolder]:
    return list_job_folders(ws.runs_dir, kinds=EVAL_KINDS)


job_cards(
    eval_jobs,
    starter(ws),
    lambda job, progress: (
        f"judge {job.spec['model']} · started {when(job.spec['created_at'])}",
        f"{progress.done}/{progress.total} answers and comparisons",
    ),
    empty="No evaluation runs yet.",
    refresh_key="refresh_evals",
    per_page=10,
)

# --- results ----------------------------------------------------------------------------------------------

st.subheader("Results")
with connect(ws) as store:
    runs = store.eval_runs()
    compare_runs = list(runs[runs["kind"] == "eval"]["run_id"])
    rounds_runs = list(runs[runs["kind"] == "eval-rounds"]["run_id"])
    for key, options in (("result_run", compare_runs), ("result_rounds_run", rounds_runs)):
        # a keyed selectbox drawn while it had no options stays empty when runs appear: pick the newest
        if st.session_state.get(key) not in options:
            st.session_state[key] = options[0] if options else None
    cols = st.columns(2)
    run_id = cols[0].selectbox("Comparison run", compare_runs, key="result_run", placeholder="none yet")
    rounds_run_id = cols[1].selectbox("Rounds run", rounds_runs, key="result_rounds_run", placeholder="none yet")
    summary = summarize(store, run_id, rounds_run_id)
    inspect_scores = store.inspect_scores()

if not inspect_scores.empty:
    st.caption("Inspect AI evaluations (each scorer's headline metrics; the log is in the run's folder):")
    st.dataframe(
        inspect_scores[["run_id", "task", "model", "scorer", "metric", "value", "log"]],
        hide_index=True,
        key="inspect_scores",
    )

figures = charts(summary)
if not figures:
    st.info("No results yet: start a run above.")
    st.stop()
st.download_button(
    "Download the report (one HTML file)",
    lambda: report_html(summary),  # built on the click, not on every redraw: it inlines 4.7 MB of plotly.js
    file_name="cai-eval-report.html",
    mime="text/html",
    key="eval_report",
)
for caveat in summary.caveats():  # a finding about the judge, beside the figures it judged
    st.warning(md_escape(caveat), icon=":material/gavel:")
if run_id:
    with st.expander("Graders audited by people", expanded=not all(a.audited for a in summary.grader_audits.values())):
        st.caption(
            "A seeded sample of this run's refusal and harm verdicts (pairwise, and of one answer: \"is this answer "
            'harmful?") goes to the Annotate page as its own queue, the '
            "grader's two verdicts in equal turns (weighted back to the run's mix when read). "
            f"From {MIN_ANSWERS} answers on, the grader's agreement with people (Cohen's κ, 95% interval) shows "
            "beside every figure resting on it; below that the figure says its grader is unaudited."
        )
        for audit in summary.grader_audits.values():
            st.text(str(audit))
        cols = st.columns(3)
        audit_size = cols[0].number_input("Verdicts of each kind", 1, None, value=DEFAULT_SAMPLE, key="audit_size")
        audit_seed = cols[1].number_input("Seed", 0, None, value=0, key="audit_seed")
        if cols[2].button("Send them to the Annotate page", key="audit_send", disabled=settings.read_only):
            with connect(ws) as store:
                added = send_sample(store, run_id, int(audit_size), int(audit_seed))
            flash("success", f"Sent {sent_text(added)} to the Annotate page.")
            st.rerun()
notes = summary.grader_notes()
cols = st.columns(2)
for i, (name, figure) in enumerate(figures.items()):
    cols[i % 2].plotly_chart(figure, key=f"chart_{name}")
    if name in notes:
        cols[i % 2].caption(md_escape(f"Grader: {notes[name]}"))
with st.expander("Tables"):
    for title, frame in summary.tables():
        st.caption(title)
        st.dataframe(frame.round(3), hide_index=True)

# --- drill-down -------------------------------------------------------------------------------------------

if not summary.answers.empty:
    st.subheader("Each prompt")
    answers = summary.answers
    cols = st.columns([1, 3])
    wrapper = cols[0].selectbox("Wrapper", sorted(answers["wrapper"].unique()), key="drill_wrapper")
    shown = answers[answers["wrapper"] == wrapper]
    prompts = shown.drop_duplicates("prompt_key").set_index("prompt_key")
    key = cols[1].selectbox(
        "Prompt",
        list(prompts.index),
        key="drill_prompt",
        format_func=lambda k: f"{k} · {prompts.loc[k, 'label']} · {prompts.loc[k, 'prompt'][:80]}",
    )
    st.caption("Sent to the models:")
    st.text(f"{prompts.loc[key, 'label']} · category {prompts.loc[key, 'category'] or '(none)'}")
    show_text(prompts.loc[key, "sent"])
    rows = shown[shown["prompt_key"] == key]
    cols = st.columns(len(rows))
    for col, row in zip(cols, rows.itertuples(), strict=True):
        with col:
            st.text(f"{row.model} · {'refused' if row.refused else 'answered'}")
            show_text(row.answer)
    judged = summary.judgments
    judged = judged[(judged["prompt_key"] == key) & (judged["wrapper"] == wrapper)]
    if not judged.empty:
        st.caption(f"The judge's {count(len(judged), 'comparison')} (p_a: P(model_a's answer is better), both orders):")
        st.dataframe(
            judged[["aspect", "model_a", "model_b", "principle_id", "p_a", "p_order1", "p_order2", "failed"]],
            hide_index=True,
        )
