"""Training: pick an algorithm, edit its config, start it in the background, and follow its curves and log.

A run starts the way `cai train KIND ... --background` starts it, as every page starts a job: `jobs.prepare`
snapshots the data and makes the run's folder, then `jobs.launch` runs `cai resume RUN_ID` detached (which starts
its processes through `torchrun` or `accelerate launch` when it has several), so reloading the page does not
stop it. The browser never names code or a path outside the workspace: a reward is picked from the registry's
reward models and the functions the operator registered (CAI_REWARD_FUNCTIONS), and a run id is a slug.
The run never opens the database; every page run copies its metrics in, and the registry comes from the
store (`Store.train_runs`, `Store.train_metrics`).
"""

import dataclasses
import typing

import pandas as pd
import plotly.express as px
import streamlit as st

from cai_core import jobs
from cai_core.config import ConfigError, browser_value
from cai_core.jobs import TRAINING_KINDS, JobFolder, list_job_folders, training_algorithm, training_kind_name
from cai_core.label_gate import recorded_decisions
from cai_core.tracking import tracking_record
from cai_core.train import KINDS, config_class
from cai_core.train.config import config_from_dict
from cai_core.train.dpo import describe_probability, recorded_probability
from cai_core.train.form import form_label, latest_finished, reward_choices
from cai_core.train.models import finished_model
from ui.hub import model_push
from ui.job_controls import ACTIVE, job_buttons, job_log, job_status, launch_job, live_panel, starter
from ui.monitor import monitor_section
from ui.paging import page_of, pager
from ui.settings import connect, setup, use_model
from ui.text import flash, md_escape, show_flash, when

settings = setup("Train")
ws = settings.workspace
ss = st.session_state

SHOWN_RUNS = 20  # the registry's rows a page
MAIN_FIELDS = ("model", "dataset", "reward_model", "labels", "max_steps", "batch_size", "learning_rate")
# the registry's columns: each metric's last value, named for what it measures
KEY_METRICS = {
    "loss": "loss (last step)",
    "reward": "reward (last batch)",
    "kl": "KL to the reference",
    "accuracy_human": "RM accuracy: held-out people's labels",
    "accuracy_heldout": "RM accuracy: held-out split of its pairs",
    "ece_human": "RM calibration error: held-out people's labels",
    "accuracy": "RM accuracy: last training batch",
    "rewards/accuracies": "DPO: chosen ranked first, last training batch",
    "rewards/margins": "DPO: reward margin, last training batch",
}
# bookkeeping, not learning; and the trainer's end-of-run summary (train_loss, train_runtime, ...) is skipped too
HIDDEN_METRICS = ("epoch", "learning_rate", "grad_norm", "num_tokens", "total_flos", "step_time")

# --- the config form: one widget per dataclass field -----------------------------------------------------


def field_type(hint) -> tuple[type | tuple, bool]:
    """(the field's type, or a Literal's choices; whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return args, False
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return field_type(rest[0])[0], True
    return hint, False


def widget_key(kind: str, name: str) -> str:
    return f"train_{kind}_{name}"


def config_widget(kind: str, f: dataclasses.Field, hint, where, choices: dict[str, str] | None = None) -> None:
    """Draw the field's widget; its value is read back from session state by `form_values`. With `choices`
    (spec → label) the field is a list to pick from, never free text."""
    key, typ, optional = widget_key(kind, f.name), *field_type(hint)
    label = form_label(f)
    help_ = f"{f.metadata.get('help', '')} (`{f.name}`)"
    default = f.default
    if choices is not None:
        if ss.get(key) not in choices:
            ss[key] = next(iter(choices), None)
        where.selectbox(label, list(choices), key=key, help=help_, format_func=choices.get)
    elif isinstance(typ, tuple):
        ss.setdefault(key, default)
        where.selectbox(label, typ, key=key, help=help_)
    elif typ is bool:
        ss.setdefault(key, default)
        where.checkbox(label, key=key, help=help_)
    elif typ is int and optional:
        where.number_input(label, min_value=0, step=1, value=default, placeholder="none", key=key, help=help_)
    elif typ is int:
        ss.setdefault(key, default)
        where.number_input(label, min_value=0, step=1, key=key, help=help_)
    else:  # str and float: floats as text, so that 2e-05 stays readable (the config reads them back)
        ss.setdefault(key, "" if default is None else f"{default:g}" if isinstance(default, float) else str(default))
        where.text_input(label, key=key, help=help_, placeholder="none" if optional else None)


def form_values(kind: str, cls, choices: dict[str, dict]) -> dict:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        value = ss.get(widget_key(kind, f.name))
        if f.name in choices and value not in choices[f.name]:
            value = None  # nothing to pick from: the config's check says what is missing
        typ, optional = field_type(hints[f.name])
        if isinstance(value, str):
            value = value.strip()
            if not value and optional:
                value = None
            elif typ is str and f.name not in choices and value != f.default:
                # a default is the project's, not typed in the browser
                value = browser_value(cls, f.name, value, ws, settings.endpoints)
        values[f.name] = value
    return values


# --- runs ---------------------------------------------------------------------------------------------


def train_jobs() -> list[JobFolder]:
    return list_job_folders(ws.runs_dir, kinds=TRAINING_KINDS)


def final_model(job: JobFolder) -> str | None:
    final = finished_model(job.path)
    return str(final) if final else None


def label_choices(label_runs: pd.DataFrame) -> dict[str, str]:
    """Where preference pairs can come from, for the reward model and DPO (`PreferenceData.labels`)."""
    finished = label_runs[label_runs.status == "done"] if not label_runs.empty else label_runs
    return {
        "": "the latest AI label run",
        **{run_id: f"AI labels · {run_id}" for run_id in finished.run_id},
        "human": "people's labels",
        "sl-cai": "SL-CAI revision over first answer",
    }


def registry_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The registry as the user reads it: one row a run, its last value of the key metrics."""
    table = pd.DataFrame(
        {
            "run": runs["run_id"],
            "algorithm": runs["kind"].map(training_algorithm),
            "status": runs["status"],
            "step": [f"{d}/{t}" for d, t in zip(runs["done"], runs["total"], strict=True)],
            "started": [when(t) for t in runs["created_at"]],
            "ended": ["" if s in ACTIVE else when(t) for s, t in zip(runs["status"], runs["updated_at"], strict=True)],
        }
    )
    for name, title in KEY_METRICS.items():
        if f"final_{name}" in runs.columns:
            table[title] = runs[f"final_{name}"].round(4)
    table["model folder or reason"] = [
        path if isinstance(path, str) and path else message
        for path, message in zip(runs["model_path"], runs["message"], strict=True)
    ]
    return table


def rm_evaluation_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """A reward model's evaluation on its held-out pairs (`cai_core.train.reward.evaluation`), one row a split."""
    last = metrics.groupby("name")["value"].last()
    rows = []
    for label, title in (("human", "people's labels"), ("heldout", "held-out split of its pairs")):
        if f"accuracy_{label}" in last:
            row = {"held-out pairs": title, "accuracy": last[f"accuracy_{label}"]}
            row["calibration error (ECE)"] = last.get(f"ece_{label}")
            for size in ("short", "medium", "long"):
                row[f"mean reward, {size} answers"] = last.get(f"reward_{size}_{label}")
            rows.append(row)
    return pd.DataFrame(rows).round(4)


def metric_chart(frame: pd.DataFrame, name: str):
    fig = px.line(frame, x="step", y="value", markers=len(frame) <= 30, title=name)
    fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10}, showlegend=False, yaxis_title=None)
    return fig


# --- the page -----------------------------------------------------------------------------------------

st.title("Train")
show_flash()
st.write(
    "Train a model on what the workbench has gathered: SFT on the SL-CAI revisions, a reward model on the AI "
    "preference labels, then PPO, GRPO or RLOO against it, or DPO directly. A run continues in the background; "
    "its finished model becomes a model spec for every page."
)

kind = st.segmented_control(
    "Algorithm", KINDS, default="sft", key="train_kind", format_func=str.upper, help="The CLI's `cai train KIND`."
)
kind = kind or "sft"
cls = config_class(kind)
st.caption(cls.summary)
hints = typing.get_type_hints(cls)
fields = {f.name: f for f in dataclasses.fields(cls)}

with connect(ws) as store:
    registry, label_runs = store.train_runs(), store.runs("label")
choices = {}
if "reward_model" in fields:
    choices["reward_model"] = reward_choices(registry)
    if not choices["reward_model"]:
        st.info("No reward model yet: train one on the RM tab first.")
if "labels" in fields:
    choices["labels"] = label_choices(label_runs)

# the model field follows the sidebar model (or, for RL and DPO, the latest SFT model) until edited here
model_key = widget_key(kind, "model")
latest_sft = latest_finished(registry, "sft") if cls.starts_from_sft else None
model_source = latest_sft or settings.model
if ss.get(f"{model_key}_from") != model_source:
    ss[model_key] = model_source
    ss[f"{model_key}_from"] = model_source
if latest_sft:
    st.caption(f"The policy starts from the latest SFT model, run {latest_sft}, unless you name another.")

# Widgets outside a form, and a button of their own: in a form, Enter in any number or text box (Max steps, say)
# submits it, which would start a training run nobody asked for. Here Enter only takes the value.
with st.container(border=True, key=f"train_form_{kind}"):
    main = [name for name in MAIN_FIELDS if name in fields]
    cols = st.columns(len(main))
    for col, name in zip(cols, main, strict=True):
        config_widget(kind, fields[name], hints[name], col, choices.get(name))
    with st.expander("All settings"):
        rest = [f for f in fields.values() if f.name not in MAIN_FIELDS]
        cols = st.columns(3)
        for i, f in enumerate(rest):
            config_widget(kind, f, hints[f.name], cols[i % 3], choices.get(f.name))
    submitted = st.button("Start in the background", key="train_start", type="primary", disabled=settings.read_only)

if submitted:
    try:
        config = config_from_dict(cls, form_values(kind, cls, choices))
        job = jobs.prepare(training_kind_name(kind), config, ws)
    except ConfigError as exc:  # a TrainError, or a value the browser may not give
        # the field at fault by its label on this form; a refused start leaves no run behind
        message = exc.named(form_label(fields[exc.field])) if exc.field in fields else str(exc)
        st.error(md_escape(f"Not started: {message}"))
    else:
        ss["train_run"], ss["train_runs_page"] = job.run_id, 1  # the newest run: on the registry's first page
        if job.progress().status == "done" and final_model(job):
            st.info(f"{job.run_id} has already finished: the same config and data make the same run.")
        elif not launch_job(job, starter(ws)):
            st.info(f"{job.run_id} is already running: the same config and data make the same run.")
        else:
            st.success(f"Started {job.run_id}. Its curves and log are below.")

# --- the registry and the selected run ----------------------------------------------------------------------

st.subheader("Runs")
listed = train_jobs()
if not listed:
    st.info("No training runs yet.")
    st.stop()


def runs_panel() -> bool:
    """The registry, then the selected run's status, curves and log; True while any run is active."""
    listed = train_jobs()
    page = pager("train_runs_page", len(listed), SHOWN_RUNS)
    ids = [j.run_id for j in listed[(page - 1) * SHOWN_RUNS : page * SHOWN_RUNS]]
    if ss.get("train_run") not in ids:
        ss["train_run"] = ids[0]
    with connect(ws) as store:  # also takes in the metrics the runs have written since the last redraw
        runs = store.train_runs(run_ids=ids)
        if not runs.empty:
            st.dataframe(registry_table(runs), hide_index=True, key="train_table")
        run_id = st.selectbox("Run", ids, key="train_run", help="The run whose curves and log are shown below.")
        metrics = store.train_metrics(run_id)

    job = JobFolder(ws.runs_dir / run_id)
    progress, spec = job.progress(), job.spec
    model = final_model(job)
    with st.container(border=True, key="train_selected"):
        job_status(
            job,
            progress,
            details=f"model {spec['model']} · started {when(spec['created_at'])}",
            progress_text=f"step {progress.done}/{progress.total}",
            show_message=progress.message != f"model in {model}",  # the folder is shown below
        )
        with st.container(horizontal=True):
            job_buttons(job, progress, starter(ws))
            if (
                model
                and training_algorithm(spec["kind"]) != "rm"
                and st.button(  # a reward model scores, it cannot answer
                    "Use this model",
                    key=f"train_use-{run_id}",
                    on_click=use_model,
                    args=(model,),
                    icon=":material/input:",
                    help="Set the sidebar model to this run's model folder, for every page.",
                )
            ):
                flash("success", f"Every page now uses the model in {model}.")
                st.rerun()  # the whole page: the sidebar and the flash message lie outside this fragment
        if model:
            st.caption("Model folder (a model spec for every page):")
            st.code(model, language=None)
            model_push(job, disabled=settings.read_only)
        if tracked := tracking_record(job):
            if tracked["link"]:
                st.link_button(f"Open in {tracked['tracker']}", tracked["link"], icon=":material/monitoring:")
            st.caption(f"The {tracked['tracker']} run is in {tracked['where']}; start its local viewer with:")
            st.code(tracked["open_with"], language=None)

        if training_algorithm(spec["kind"]) == "rm" and not (evaluation := rm_evaluation_table(metrics)).empty:
            st.caption("Evaluation (a reward that grows with answer length is the classic reward hack):")
            st.dataframe(evaluation, hide_index=True, key="train_rm_evaluation")
        if not (read := recorded_probability(job.path)).empty:
            st.caption(f"Preference labels read: {describe_probability(read)}.")
        if not (decisions := recorded_decisions(job.path)).empty:
            with st.expander(
                f"Label gate: {', '.join(f'{n} {d}' for d, n in decisions.decision.value_counts().items())}"
            ):
                st.caption("Which principles' AI labels this run trained on, by their agreement with people.")
                st.dataframe(
                    decisions[["principle_id", "decision", "weight", "reason"]], hide_index=True, key="train_gate"
                )
        names = [
            n
            for n in dict.fromkeys(metrics["name"])
            # the monitor's signals are drawn below; its answer reader's zero reward (GRPO, RLOO) is no curve
            if n not in HIDDEN_METRICS and not n.startswith(("train_", "monitor/", "rewards/monitor_answers/"))
        ]
        if names:
            names = [n for n in KEY_METRICS if n in names] + [n for n in names if n not in KEY_METRICS]
            cols = st.columns(3)
            for i, name in enumerate(names[:6]):
                frame = metrics[metrics["name"] == name]
                cols[i % 3].plotly_chart(metric_chart(frame, name), key=f"train_chart-{name}")
        else:
            st.caption("No metrics logged yet.")
        monitor_section(metrics, spec["config"].get("monitor_rules", ""), key="train_monitor")
        job_log(job, expanded=progress.status == "failed")
    return any(JobFolder(ws.runs_dir / run_id).progress().status in ACTIVE for run_id in ids)


shown = page_of(listed, "train_runs_page", SHOWN_RUNS)
live_panel(runs_panel, active=any(j.progress().status in ACTIVE for j in shown), refresh_key="train_refresh")
