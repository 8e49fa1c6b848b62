"""The workbench's home page: what the data folder holds and where to start.

Start it with `cai app` (or `make run`). Streamlit adds one page per file in `pages/` to the sidebar;
the settings drawn there (data folder, database, model) are shared by every page.
"""

import streamlit as st

from cai_core.constitution import list_constitutions
from cai_core.jobs import list_job_folders
from cai_core.prompts import PromptFileError, load_prompts
from pages import connect, setup

settings = setup("Home")
ws = settings.workspace

st.title("Constitutional AI workbench")
st.write(
    "Write the principles a model should follow, let the model critique and revise its own answers against "
    "them (SL-CAI, Bai et al. 2022), then step through what it did and judge each round."
)

with connect(ws) as store:  # connecting also takes in what background jobs have written since
    counts = store.counts()
try:
    demo_prompts = len(load_prompts(ws.demo_prompts).prompts)
except PromptFileError:
    demo_prompts = 0
running = sum(job.progress().status in ("pending", "running") for job in list_job_folders(ws.runs_dir))

columns = st.columns(5)
columns[0].metric("Constitution files", len(list_constitutions(ws.constitutions_dir)))
columns[1].metric("Demo prompts", demo_prompts)
columns[2].metric("Runs", counts["runs"], f"{running} running" if running else None, delta_color="off")
columns[3].metric("Traces", counts["traces"])
columns[4].metric("Constitution versions", counts["constitution_versions"])

st.subheader("How to start")
steps = st.columns(3)
with steps[0], st.container(border=True):
    st.markdown("**1. Read and edit a constitution**")
    st.write(
        "Change principles, save them as versions, diff and restore versions, preview the exact prompts a "
        "principle produces, and try one critique→revision with the model."
    )
    st.page_link("pages/1_Constitution.py", label="Open the constitution editor", icon=":material/gavel:")
with steps[1], st.container(border=True):
    st.markdown("**2. Generate traces**")
    st.write(
        "Start an SL-CAI run over the demo prompts (or your own). It runs in the background: closing the "
        "tab does not stop it, and the page shows its progress."
    )
    st.page_link("pages/3_Generate.py", label="Start a generation run", icon=":material/rocket_launch:")
with steps[2], st.container(border=True):
    st.markdown("**3. Inspect and judge**")
    st.write(
        "Step through prompt → answer → critique → revision with word-level diffs, and record whether each "
        "revision got better and each critique was valid."
    )
    st.page_link("pages/2_Traces.py", label="Open the trace inspector", icon=":material/search:")

st.subheader("Where things are")
st.code(
    f"Data folder:    {ws.root}\n"
    f"Database:       {ws.db_path}\n"
    f"Job folders:    {ws.runs_dir}\n"
    f"Constitutions:  {ws.constitutions_dir}\n"
    f"Model:          {settings.model}",
    language=None,
)
st.caption("The same data is reachable from the command line: `cai --help`.")
