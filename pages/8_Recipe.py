"""The CAI recipe: pick a recipe, start it in the background, watch its stages advance, read what each iteration
changed. The recipe and each of its stages are ordinary jobs (`cai recipe run FILE --background` starts the same),
so cancel, resume and the logs work as they do on the other pages."""

import dataclasses
from pathlib import Path

import streamlit as st

from cai_core.eval_report import frontier_chart
from cai_core.recipe import (
    Recipe,
    RecipeError,
    frontier,
    frontier_table,
    gate_decisions,
    iteration_summary,
    load_recipe,
    plan,
    report_html,
    stage_table,
)
from cai_core.train.monitor import monitor_metrics
from ui.job_controls import ACTIVE, job_buttons, job_log, job_status, live_panel, start_from_form, starter
from ui.monitor import monitor_section
from ui.settings import connect, setup
from ui.text import md_escape, show_flash, when
from ui.tracking import tracker_choice

settings = setup("Recipe")
ws = settings.workspace
ss = st.session_state

STAGE_PAGES = {
    "generate": ("pages/2_Traces.py", "Traces"),
    "sft": ("pages/4_Train.py", "Train"),
    "pairs": ("pages/5_Annotate.py", "Annotate"),
    "label": ("pages/6_Agreement.py", "Agreement"),
    "rm": ("pages/4_Train.py", "Train"),
    "rl": ("pages/4_Train.py", "Train"),
    "eval": ("pages/7_Evaluate.py", "Evaluate"),
}


def recipe_files() -> dict[str, Path]:
    """The recipes folder's files (the project's recipes/, or $CAI_RECIPES_DIR): chosen from a list, never typed or
    uploaded, because a recipe names models and files that its jobs read, and the browser may not point those
    outside the workspace. The operator adds recipes there; the CLI runs any file."""
    return {path.name: path for path in sorted(ws.recipes_dir.glob("*.yaml"))}


def report() -> str:
    """The report, made when the button is pressed (it inlines plotly.js: megabytes, not for every redraw)."""
    with connect(ws) as store:
        return report_html(config, ws, store)


st.title("Recipe")
show_flash()
st.write(
    "Alternate SL-CAI and RL-CAI in one run, as the CAI paper's protocol reads: each iteration runs SL-CAI on the "
    "current policy, fine-tunes on the revisions, samples pairs from that model, labels them with the AI judge, "
    "trains a reward model and runs RL with a KL penalty to the SFT model, then evaluates every checkpoint (the SFT "
    "and RL models of each arm) against the base and the previous iteration, on the standard sets unless the recipe "
    "names others. Comparison arms (SFT without critique; RLHF on people's labels) run beside it."
)

files = recipe_files()
choice = st.selectbox("Recipe", list(files), key="recipe_file", help=f"The files in {ws.recipes_dir}.")
if not choice:
    st.info(f"No recipe files in {ws.recipes_dir}.")
    st.stop()
try:
    config = load_recipe(files[choice])
except (RecipeError, OSError) as exc:
    st.error(md_escape(f"{files[choice].name}: {exc}"))
    st.stop()

with st.expander(f"{config.name}: {len(plan(config))} stages over {config.iterations} iteration(s)"):
    st.code(files[choice].read_text(encoding="utf-8"), language="yaml")

job = Recipe(config, ws).job
tracker = tracker_choice(config.tracker, "recipe_tracker")  # the recipe's and its stages'; not part of its id
if st.button("Start (or resume)", key="recipe_start", type="primary", disabled=settings.read_only):
    job = start_from_form(ws, "recipe", lambda: dataclasses.replace(config, tracker=tracker), "") or job


def recipe_panel() -> bool:
    """The recipe's status, its stages and what each iteration changed; True while it runs."""
    if not (job.path / "run.json").exists():
        st.info("Not started yet.")
        return False
    progress = job.progress()
    job_status(
        job,
        progress,
        details=f"policy {config.policy} · judge {config.judge} · started {when(job.spec['created_at'])}",
        progress_text=f"{progress.done}/{progress.total} stages",
    )
    job_buttons(job, progress, starter(ws))
    rows = stage_table(config, ws)
    st.dataframe(rows, hide_index=True, key="recipe_stages")
    for row in rows:
        if row["warnings"]:
            st.warning(md_escape(f"{row['run_id']}: {row['warnings']}"), icon=":material/warning:")
    with st.container(horizontal=True):
        for step in dict.fromkeys(row["step"] for row in rows if row["status"] != "not started"):
            page, label = STAGE_PAGES[step]
            st.page_link(page, label=f"{step}: {label}")
    with connect(ws) as store:
        summary = iteration_summary(config, ws, store)
        points = frontier(config, ws, store)
    if not summary.empty:
        st.subheader("What each iteration changed")
        st.dataframe(summary, hide_index=True, key="recipe_summary")
    if not points.empty:
        st.subheader("Harmlessness against over-refusal, per stage and arm")
        st.plotly_chart(frontier_chart(points), key="recipe_frontier")
        st.dataframe(frontier_table(points), hide_index=True, key="recipe_frontier_points")
    if not (gated := gate_decisions(config, ws)).empty:
        counts = ", ".join(f"{n} {d}" for d, n in gated.decision.value_counts().items())
        with st.expander(f"Label gate: {counts} (principle decisions over the stages that read AI labels)"):
            st.dataframe(gated, hide_index=True, key="recipe_gate")
    recipe = Recipe(config, ws)
    for stage in plan(config):
        stage_job = recipe.stage_job(stage)
        if stage.step == "rl" and (stage_job.path / "run.json").exists():
            with st.expander(f"Reward-hacking monitor: {stage.name}", expanded=True):
                rules = stage_job.spec["config"].get("monitor_rules", "")
                if not monitor_section(monitor_metrics(stage_job), rules, key=f"recipe_monitor-{stage_job.run_id}"):
                    st.caption("No monitor signals logged yet.")
    job_log(job)
    return progress.status in ACTIVE


# a recipe never started has no folder, and a folder-less job reads "pending": not a job to keep redrawing for
started = (job.path / "run.json").exists()
live_panel(recipe_panel, active=started and job.progress().status in ACTIVE, refresh_key="recipe_refresh")
if started:
    # outside the panel: a report made on the click is registered at each redraw, and the panel redraws every
    # few seconds while the recipe runs, which would drop the one a click had just asked for
    st.download_button(
        "Download the report (one HTML file, opens offline)",
        report,
        file_name=f"{config.name}-report.html",
        mime="text/html",
        key="recipe_report",
        icon=":material/download:",
        on_click="ignore",
    )
