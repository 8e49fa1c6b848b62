"""The constitution A/B on the Constitution page's History tab (`cai_core.ab`): the form that starts one on two
saved versions of the file, then the A/B runs of its versions, each with its progress, paired win rates and one
prompt's two traces side by side. The runs live in job folders: only the A/B's audit by people (its pairs sent to
the Annotate page, and people's labels on them, `cai_core.ab_people`) opens the store."""

from __future__ import annotations

import streamlit as st

from cai_core import jobs
from cai_core.ab import ABConfig, ABError
from cai_core.ab_people import people_vs_judge, send_to_people
from cai_core.ab_result import ab_prompt, ab_result, ab_runs
from cai_core.constitution import ConstitutionError
from cai_core.grader_audit import MIN_ANSWERS
from ui.job_controls import ACTIVE, job_buttons, job_log, job_status, launch_job, live_panel, starter
from ui.settings import Settings, connect
from ui.text import flash, show_text

NEUTRAL_JUDGE = "a neutral question"


def start_ab(settings: Settings, version_a: str, version_b: str) -> None:
    """Prepare an A/B of two saved versions and start it in the background (a button's callback)."""
    ss, ws = st.session_state, settings.workspace
    judge = ss["ab_judge"]
    try:
        config = ABConfig(
            constitution_a=version_a,
            constitution_b=version_b,
            limit=int(ss["ab_limit"]),
            rounds=int(ss["ab_rounds"]),
            model=settings.model_spec(settings.model),
            judge=settings.model_spec(settings.model),
            judge_constitution=None if judge == NEUTRAL_JUDGE else str(ws.constitutions_dir / judge),
        )
        job = jobs.prepare("ab", config, ws)
    except (ABError, ConstitutionError, KeyError, ValueError, OSError) as exc:
        flash("error", f"The A/B was not started: {exc}")
        return
    ss["ab_run"] = job.run_id
    if launch_job(job, starter(ws)):
        flash("success", f"Started the A/B {job.run_id} in the background; its result appears below as it comes.")
    else:
        flash("info", f"{job.run_id} is already running: the same two versions and settings make the same A/B.")


def send_pairs(settings: Settings, run_id: str) -> None:
    """Send the A/B's judged A vs B pairs to the Annotate page's queue (a button's callback)."""
    ws = settings.workspace
    try:
        with connect(ws) as store:
            added = send_to_people(ws, store, run_id)
    except ABError as exc:
        flash("error", f"Not sent: {exc}")
        return
    flash(
        "success",
        f"Sent {added} new A vs B pairs to the Annotate page: choose Disagreement first, contested by {run_id}.",
    )


def people_section(settings: Settings, run_id: str) -> None:
    """The A/B's verdict audited by people: the button that sends its pairs, and people's labels against its judge."""
    ws = settings.workspace
    with connect(ws) as store:
        audit = people_vs_judge(ws, store, run_id)
    box = st.container(key="ab_people")
    box.markdown("**People on this A/B**")
    box.caption(
        "Its A vs B pairs go to the Annotate page's queue (Disagreement first, contested by this A/B, serves them "
        f"first, the judge's least certain first). From {MIN_ANSWERS} labels on, the judge's agreement with people "
        "(Cohen's κ, 95% interval) shows here, with A's win rate by people beside the judge's on the same pairs."
    )
    box.text(str(audit))
    box.button(
        "Send its A vs B pairs to the Annotate page",
        key="ab_people_send",
        on_click=send_pairs,
        args=(settings, run_id),
        disabled=settings.read_only,
    )


def ab_form(settings: Settings, labels: dict[str, str], versions: dict[str, str], judges: list[str]) -> None:
    """Pick two saved versions (`labels`: choice → label, newest first; `versions`: choice → version), the
    prompts, the rounds and the judge: NEUTRAL_JUDGE or one of the other constitution files (`judges`)."""
    st.subheader("Compare these two versions on prompts (A/B)")
    st.caption(
        "SL-CAI under each version with the sidebar's model, on the same red-team and benign prompts and seeds; "
        "then the judge compares, per prompt, A's final revision with B's and each with its initial answer, in "
        "both orders, under a neutral question or a third constitution's principles (neither version judges "
        "itself)."
    )
    choices = list(labels)
    cols = st.columns(2)
    ab_a = cols[0].selectbox("Version A", choices, index=min(1, len(choices) - 1), format_func=labels.get, key="ab_a")
    ab_b = cols[1].selectbox("Version B", choices, index=0, format_func=labels.get, key="ab_b")
    cols = st.columns([1, 1, 2, 2], vertical_alignment="bottom")
    cols[0].number_input("Prompts per set", 1, 24, 4, key="ab_limit", help="Of the red-team set and the benign set.")
    cols[1].number_input("Rounds", 1, 8, 1, key="ab_rounds")
    cols[2].selectbox("Judged by", [NEUTRAL_JUDGE, *judges], key="ab_judge")
    cols[3].button(
        "Compare on prompts",
        key="ab_start",
        type="primary",
        on_click=start_ab,
        args=(settings, versions[ab_a], versions[ab_b]),
        disabled=versions[ab_a] == versions[ab_b] or settings.read_only,
        width="stretch",
    )


def ab_runs_section(settings: Settings, versions: set[str]) -> None:
    """The A/B runs of these constitution versions, newest first: the one picked, with its figures and, for one
    prompt, both traces and the judge's view. Nothing at all when there is none."""
    ss, ws = st.session_state, settings.workspace
    ab_jobs = ab_runs(ws, versions)
    if not ab_jobs:
        return
    choices = [job.run_id for job in ab_jobs]
    ss["ab_run"] = ss.get("ab_run") if ss.get("ab_run") in choices else choices[0]
    ab_job = ab_jobs[choices.index(st.selectbox("A/B run", choices, key="ab_run"))]

    def ab_panel() -> bool:
        progress = ab_job.progress()
        job_status(ab_job, progress, details=f"model {ab_job.spec['model']}", progress_text=f"{progress.done}/3 stages")
        job_buttons(ab_job, progress, starter(ws))
        job_log(ab_job)
        return progress.status in ACTIVE

    live_panel(ab_panel, active=ab_job.progress().status in ACTIVE, refresh_key="ab_refresh")
    result = ab_result(ws, ab_job.run_id)
    for side in ("a", "b", "judge"):
        st.text(f"{side.upper():>5}: {result.names[side]} · version {result.versions[side]}")
    if result.win_rates.empty:
        st.info("Nothing judged yet: the figures appear once the judge stage has begun.")
        return
    figures = st.container(key="ab_figures")
    figures.markdown(
        "**Paired win rates** (ties count half; 95% bootstrap intervals over prompts). The last row is A's "
        "gain over its initial answer minus B's, prompt by prompt (from -1 to 1)."
    )
    figures.dataframe(result.win_rates.round(3), hide_index=True)
    cols = figures.columns(2)
    cols[0].markdown("**Per judging principle**")
    cols[0].dataframe(result.by_principle.round(3), hide_index=True)
    cols[1].markdown("**Per prompt category**")
    cols[1].dataframe(result.by_category.round(3), hide_index=True)
    figures.markdown("**Over-refusal on the benign prompts** (refusal phrases; Wilson 95% intervals)")
    figures.dataframe(result.over_refusal.round(3), hide_index=True)
    people_section(settings, ab_job.run_id)
    with st.expander("Every prompt's scores"):
        st.dataframe(result.prompts.round(3), hide_index=True)

    prompts = result.prompts.set_index("key")
    key = st.selectbox(
        "Prompt",
        list(prompts.index),
        key="ab_prompt",
        format_func=lambda k: f"{k} · {prompts.loc[k, 'label']} · {prompts.loc[k, 'prompt'][:80]}",
    )
    found = ab_prompt(ws, ab_job.run_id, key)
    st.text(f"{found.label} · category {found.category or '(none)'}")
    show_text(found.prompt)
    cols = st.columns(2)
    for col, side in zip(cols, ("a", "b"), strict=True):
        with col:
            st.markdown(f"**Constitution {side.upper()}**")
            for step in found.traces[side]:
                if step["round"]:
                    st.text(f"Round {step['round']} · {step['principle_id']} · critique")
                    show_text(step["critique"])
                st.text("Initial answer" if step["round"] == 0 else f"Round {step['round']} · revision")
                show_text(step["response"])
    st.caption("The judge (p_a: P(the first-named answer is better), both orders):")
    st.dataframe(found.judgments, hide_index=True)
