"""The workbench's home page: what the data folder holds and where to start.

Start it with `cai app` (or `make run`). The sidebar lists this page ("Home") and the steps in `pages/` in
the order `ui.navigation.STEPS` gives, the order the cards below follow; the settings drawn under that list
(data folder, database, model) and the working context (the constitution, prompts and SL-CAI run last chosen)
are shared by every page. (`st.navigation` could do the listing, but with a `pages/` folder present Streamlit
serves a deep link such as /Evaluate the old way until the main script has run once, so the sidebar would
change under the user.)
"""

import streamlit as st

from cai_core.constitution import list_constitutions
from cai_core.jobs import list_job_folders
from cai_core.prompts import PromptFileError, load_prompts
from ui.engines import show_services
from ui.navigation import STEPS
from ui.settings import connect, setup

settings = setup("Home")
ws = settings.workspace

st.title("Constitutional AI workbench")
st.write(
    "Write the principles a model should follow, let the model critique and revise its own answers against "
    "them (SL-CAI, Bai et al. 2022), then step through what it did and judge each round."
)

with connect(ws) as store:  # connecting also takes in what background jobs have written since
    counts = store.counts()
    problems = store.ingest_problems()
if problems:
    st.warning(f"{len(problems)} spooled line(s) or job file(s) could not be read and were kept out; the rest is in:")
    st.code("\n".join(map(str, problems)), language=None)
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
for row in range(0, len(STEPS), 3):  # a row of columns at a time: read in order, on screen and by a screen reader
    for column, (i, step) in zip(st.columns(3), enumerate(STEPS[row : row + 3], start=row + 1), strict=False):
        with column, st.container(border=True):
            st.markdown(f"**{i}. {step.label}**")
            st.write(step.purpose)
            st.page_link(step.page, label=step.action, icon=step.icon)

st.subheader("Engine service")
show_services(ws, place="home", can_stop=not settings.read_only)

st.subheader("Where things are")
st.code(
    f"Data folder:    {ws.root}\n"
    f"Database:       {ws.db_path}\n"
    f"Job folders:    {ws.runs_dir}\n"
    f"Constitutions:  {ws.constitutions_dir}\n"
    f"Model:          {settings.model}",
    language=None,
)
st.caption("Every step here is also a command (`cai --help`) and a call into `cai_core`.")
