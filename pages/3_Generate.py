"""Generation launcher: start an SL-CAI run in the background, follow its progress, cancel or resume it.

A run is its own process (`python -m cai_core.cli resume RUN`, as `cai generate --background` starts it),
so reloading this page or closing the tab does not stop it. It never opens the database: it writes records
into its job folder, and every page run copies them in, so its traces reach the inspector as they land.
"""

import streamlit as st

from cai_core.constitution import list_constitutions
from cai_core.critique import GenerateConfig
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.store import TraceFilter
from ui.job_controls import job_cards, start_from_form, starter
from ui.paging import page_of
from ui.settings import connect, follow_context, prompt_file_input, setup
from ui.text import count, show_flash, when

settings = setup("Generate")
ws = settings.workspace
ss = st.session_state

SHOWN_RUNS = 10


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
    prompt_file = prompt_file_input(cols[0], ws, "gen")
    skip_bad = cols[0].checkbox("Skip bad lines instead of stopping", key="gen_skip_bad")
    follow_context("constitution", "gen_constitution", [p.name for p in files])
    constitution = cols[1].selectbox("Constitution", [p.name for p in files], key="gen_constitution")
    cols[1].text_input("Model (set in the sidebar)", value=settings.model, disabled=True)
    cols = st.columns(5)
    rounds = cols[0].number_input("Rounds", 1, 16, value=None, placeholder="default", key="gen_rounds")
    samples = cols[1].number_input("Samples per prompt", 1, 64, value=1, key="gen_samples")
    max_new_tokens = cols[2].number_input("Max new tokens", 1, 4096, value=128, step=16, key="gen_tokens")
    limit = cols[3].number_input("Prompts to use", 1, None, value=None, placeholder="all", key="gen_limit")
    temperature = cols[4].number_input("Temperature", 0.0, 2.0, value=0.7, step=0.1, key="gen_temperature")
    submitted = st.form_submit_button(
        "Start in the background", key="gen_start", type="primary", disabled=settings.read_only
    )

if submitted:
    start_from_form(
        ws,
        "generate",
        lambda: GenerateConfig(
            constitution=str((ws.constitutions_dir / constitution).resolve()),
            prompts=prompt_file(),
            model=settings.model,
            rounds=rounds,
            samples=samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            limit=limit,
            skip_bad_lines=skip_bad,
        ),
        "Its progress is below; its traces appear in the inspector.",
    )

# --- runs and their progress ----------------------------------------------------------------------------

st.subheader("Runs")


stored: dict[str, int] = {}  # traces stored per run, counted in one store connection per redraw


def latest_runs() -> list[JobFolder]:
    runs = list_job_folders(ws.runs_dir)
    shown = page_of(runs, "refresh_runs_page", SHOWN_RUNS)  # the cards' page: only its runs' traces are counted
    with connect(ws) as store:  # also takes in the records the runs have written since the last redraw
        stored.update({job.run_id: store.count_traces(TraceFilter(run_id=job.run_id)) for job in shown})
    return runs


def describe(job: JobFolder, progress) -> tuple[str, str]:
    spec = job.spec
    constitution_name = (spec.get("constitution") or {}).get("name", "none")
    details = f"model {spec['model']} · constitution {constitution_name} · started {when(spec['created_at'])}"
    return details, f"{progress.done}/{progress.total} steps · {count(stored[job.run_id], 'trace')} stored"


def open_traces(job: JobFolder) -> None:
    if stored[job.run_id] and st.button("Open its traces", key=f"open-{job.run_id}"):
        ss["filter_run_id"] = job.run_id
        st.switch_page("pages/2_Traces.py")


job_cards(
    latest_runs,
    starter(ws),
    describe,
    empty="No runs yet.",
    refresh_key="refresh_runs",
    resumable=lambda job: job.spec["kind"] == "generate",
    more_buttons=open_traces,
    per_page=SHOWN_RUNS,
)
