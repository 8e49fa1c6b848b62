"""Generation launcher: start an SL-CAI run in the background, follow its progress, cancel or resume it.

A run is its own process (`python -m cai_core.cli resume RUN`, as `cai generate --background` starts it),
so reloading this page or closing the tab does not stop it. It never opens the database: it writes records
into its job folder, and every page run copies them in, so its traces reach the inspector as they land.
"""

import time
from pathlib import Path

import streamlit as st

from cai_core.constitution import ConstitutionError, list_constitutions
from cai_core.critique import GenerateConfig, prepare_job
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.prompts import PromptFileError
from cai_core.store import TraceFilter
from pages import connect, count, flash, md_escape, setup, show_flash, when

settings = setup("Generate")
ws = settings.workspace
ss = st.session_state

ACTIVE = ("pending", "running")
SHOWN_RUNS = 10
STARTING_SECONDS = 60  # a launched job says "pending" until its process has imported torch and begun
STATUS_ICONS = {
    "pending": ":material/schedule:",
    "running": ":material/autorenew:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/stop_circle:",
}


def launch(job: JobFolder) -> None:
    """Start (or resume) the job detached, with the same command line as `cai generate --background`."""
    job.resume_in_background(ws)
    ss.setdefault("launched", {})[job.run_id] = time.time()


def starting(job: JobFolder) -> bool:
    """Launched from this session a moment ago and not yet reporting: starting it again would run it twice."""
    return time.time() - ss.get("launched", {}).get(job.run_id, 0) < STARTING_SECONDS


def resume(job: JobFolder) -> None:
    launch(job)
    flash("success", f"Resumed {job.run_id}; it continues where it stopped.")


def cancel(job: JobFolder) -> None:
    job.request_cancel()
    flash("info", f"Asked {job.run_id} to stop after its current batch.")


def local_path(spec: str) -> str:
    """The job runs from the project folder, so a relative path typed here is made absolute first."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


st.title("Generate")
show_flash()
st.write(
    "Start an SL-CAI run: the model answers each prompt, then critiques and revises its answer against "
    "principles sampled from the constitution. The run continues in the background."
)

# --- start a run ----------------------------------------------------------------------------------------

files = list_constitutions(ws.constitutions_dir)
with st.form("launch_form"):
    cols = st.columns(2)
    prompt_source = cols[0].text_input(
        "Prompt file",
        value=str(ws.demo_prompts),
        key="gen_prompts",
        help=".jsonl, .csv or .txt with a `prompt` field; a saved datasets folder; or hf:NAME[:SPLIT].",
    )
    upload = cols[0].file_uploader("or upload a prompt file", type=["jsonl", "csv", "txt"], key="gen_upload")
    constitution = cols[1].selectbox("Constitution", [p.name for p in files], key="gen_constitution")
    cols[1].text_input("Model (set in the sidebar)", value=settings.model, disabled=True)
    cols = st.columns(5)
    rounds = cols[0].number_input("Rounds", 1, 16, value=None, placeholder="default", key="gen_rounds")
    samples = cols[1].number_input("Samples per prompt", 1, 64, value=1, key="gen_samples")
    max_new_tokens = cols[2].number_input("Max new tokens", 1, 4096, value=128, step=16, key="gen_tokens")
    limit = cols[3].number_input("Prompts to use", 1, None, value=None, placeholder="all", key="gen_limit")
    temperature = cols[4].number_input("Temperature", 0.0, 2.0, value=0.7, step=0.1, key="gen_temperature")
    submitted = st.form_submit_button("Start in the background", key="gen_start", type="primary")

if submitted:
    if upload is not None:
        # The job reads its prompts from a file, so an upload is kept in the data folder first.
        target = ws.root / "uploads" / Path(upload.name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(upload.getvalue())
        prompt_source = str(target)
    config = GenerateConfig(
        constitution=str((ws.constitutions_dir / constitution).resolve()),
        prompts=local_path(prompt_source.strip()),
        model=local_path(settings.model),
        rounds=rounds,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        limit=limit,
    )
    try:
        job = prepare_job(config, ws)
    except (ConstitutionError, PromptFileError) as exc:
        st.error(md_escape(f"Not started: {exc}"))
    else:
        status = job.progress().status
        if status == "running" or (status == "pending" and starting(job)):
            st.info(f"{job.run_id} is already running: the same settings make the same run.")
        else:
            launch(job)
            st.success(f"Started {job.run_id}. Its progress is below; its traces appear in the inspector.")

# --- runs and their progress ----------------------------------------------------------------------------

st.subheader("Runs")
jobs = list_job_folders(ws.runs_dir)[:SHOWN_RUNS]
refresh = any(job.progress().status in ACTIVE for job in jobs)


@st.fragment(run_every=2 if refresh else None)
def runs_panel(refreshing: bool) -> None:
    """Redrawn every 2 s while a run is active: progress, log tail, and the traces stored so far."""
    jobs = list_job_folders(ws.runs_dir)[:SHOWN_RUNS]
    if not jobs:
        st.info("No runs yet.")
        return
    with connect(ws) as store:  # also takes in the records the runs have written since the last redraw
        stored = {job.run_id: store.count_traces(TraceFilter(run_id=job.run_id)) for job in jobs}
    active = False
    for job in jobs:
        progress, spec = job.progress(), job.spec
        active |= progress.status in ACTIVE
        with st.container(border=True, key=f"run-{job.run_id}"):
            icon = STATUS_ICONS.get(progress.status, "")
            st.markdown(f"**{md_escape(job.run_id)}** · {md_escape(spec['kind'])} · {icon} {progress.status}")
            constitution_name = (spec.get("constitution") or {}).get("name", "none")
            st.text(f"model {spec['model']} · constitution {constitution_name} · started {when(spec['created_at'])}")
            st.progress(
                progress.fraction,
                text=f"{progress.done}/{progress.total} steps · {count(stored[job.run_id], 'trace')} stored",
            )
            if progress.message:
                st.caption(md_escape(progress.message))
            with st.container(horizontal=True):
                if progress.status in ACTIVE:
                    st.button("Cancel", key=f"cancel-{job.run_id}", on_click=cancel, args=(job,))
                elif progress.status in ("failed", "cancelled") and spec["kind"] == "generate":
                    st.button("Resume", key=f"resume-{job.run_id}", on_click=resume, args=(job,))
                if stored[job.run_id] and st.button("Open its traces", key=f"open-{job.run_id}"):
                    ss["filter_run_id"] = job.run_id
                    st.switch_page("pages/2_Traces.py")
            with st.expander("Log"):
                st.code(job.log_tail() or "(no output yet)", language=None)
    if refreshing and not active:
        st.rerun()  # every run has finished: redraw the whole page once, which stops the refreshing


runs_panel(refresh)
if not refresh:
    st.button("Refresh", key="refresh_runs")
