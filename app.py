"""The workbench's home page: what the data folder holds and where to start.

Start it with `cai app` (or `make run`). Streamlit adds one page per file in `pages/` to the sidebar, under
this file's name ("app"); the settings drawn there (data folder, database, model) are shared by every page.
(`st.navigation` could name it "Home", but with a `pages/` folder present Streamlit still serves a deep
link such as /Evaluate the old way until the main script has run once, so the sidebar would change under
the user.)
"""

import streamlit as st

from cai_core.constitution import list_constitutions
from cai_core.jobs import list_job_folders
from cai_core.prompts import PromptFileError, load_prompts
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
STEPS = [
    (
        "1. Read and edit a constitution",
        "Change principles, save them as versions, diff and restore versions, preview the exact prompts a "
        "principle produces, and try one critique→revision with the model.",
        "pages/1_Constitution.py",
        "Open the constitution editor",
        ":material/gavel:",
    ),
    (
        "2. Generate traces",
        "Start an SL-CAI run over the demo prompts (or your own). It runs in the background: closing the "
        "tab does not stop it, and the page shows its progress.",
        "pages/3_Generate.py",
        "Start a generation run",
        ":material/rocket_launch:",
    ),
    (
        "3. Inspect and judge",
        "Step through prompt → answer → critique → revision with word-level diffs, and record whether each "
        "revision got better and each critique was valid.",
        "pages/2_Traces.py",
        "Open the trace inspector",
        ":material/search:",
    ),
    (
        "4. AI feedback against people's",
        "Import or make response pairs, let the judge label them in both orders, label some yourself, and "
        "see where the AI and people agree.",
        "pages/6_Agreement.py",
        "Open the agreement dashboard",
        ":material/handshake:",
    ),
    (
        "5. Train",
        "SFT on the revisions, a reward model on the AI labels, PPO against it, or DPO straight from the "
        "labels, with live curves; a finished model joins the sidebar's model list.",
        "pages/4_Train.py",
        "Start a training run",
        ":material/model_training:",
    ),
    (
        "6. Evaluate",
        "Compare models on red-team and benign prompts, with jailbreak wrappers: win rates, ratings, "
        "refusals and over-refusals, and which principles' revisions helped.",
        "pages/7_Evaluate.py",
        "Start an evaluation",
        ":material/monitoring:",
    ),
]
columns = st.columns(3)
for i, (title, text, page, label, icon) in enumerate(STEPS):
    with columns[i % 3], st.container(border=True):
        st.markdown(f"**{title}**")
        st.write(text)
        st.page_link(page, label=label, icon=icon)

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
