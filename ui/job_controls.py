"""The controls every page that launches background jobs shares: start once, cancel, resume, status with its
progress and message, the log, and a panel that redraws itself while a job is active."""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from cai_core import jobs
from cai_core.auth import current_actor
from cai_core.jobs import JobFolder, Progress
from cai_core.workspace import Workspace

from .paging import page_of, pager
from .text import flash, md_escape

ACTIVE = ("pending", "running")
REFRESH_SECONDS = 2
STARTING_SECONDS = 60  # a launched job says "pending" until its process has imported torch and begun
STATUS_ICONS = {
    "pending": ":material/schedule:",
    "running": ":material/autorenew:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/stop_circle:",
}

Starter = Callable[[JobFolder], object]
"""Starts a job's process detached, e.g. `starter(ws)`."""


def launch_job(job: JobFolder, start: Starter) -> bool:
    """Start the job unless it is running, or this session launched it a moment ago and its process has not
    begun reporting yet (starting it again would run it twice). True when it was started."""
    status = job.progress().status
    launched_at = st.session_state.get("launched_at", {}).get(job.run_id, 0)
    if status == "running" or (status == "pending" and time.time() - launched_at < STARTING_SECONDS):
        return False
    start(job)
    st.session_state.setdefault("launched_at", {})[job.run_id] = time.time()
    return True


def starter(ws: Workspace) -> Starter:
    """How a page starts (or resumes) a job: detached, as the CLI's `--background` does (`jobs.launch`)."""
    return lambda job: jobs.launch(job, ws)


def start_from_form(
    ws: Workspace,
    kind: str,
    make_config: Callable[[], object],
    started: str,
    sources: Callable[[object], dict] = lambda config: {},
) -> JobFolder | None:
    """Build a job's config from what a form holds, prepare the job (`sources(config)`: what its kind's plan is
    handed) and launch it, then say what happened: why it was not started (the error names the field or file),
    that it is running already (the same settings make the same run), or that it started, then `started`."""
    try:
        config = make_config()
        job = jobs.prepare(kind, config, ws, **sources(config))
    except (OSError, ValueError) as exc:  # ConstitutionError, PromptFileError, OutsideWorkspace, RecipeError, ...
        st.error(md_escape(f"Not started: {exc}"))
        return None
    # a job started from a page is named by a hash of its settings, never by text typed there: shown as it is
    if launch_job(job, starter(ws)):
        st.success(f"Started {job.run_id}. {started}".strip())
    else:
        st.info(f"{job.run_id} is already running: the same settings make the same run.")
    return job


def cancel_job(job: JobFolder) -> None:
    job.request_cancel()
    flash("info", f"Asked {job.run_id} to stop; what it has done so far is kept.")


def stopping(job: JobFolder, progress: Progress) -> bool:
    """Asked to stop and not stopped yet (a cancel file on a stopped run is an old request)."""
    return progress.status in ACTIVE and job.cancel_requested()


def resume_job(job: JobFolder, start: Starter) -> None:
    start(job)
    st.session_state.setdefault("launched_at", {})[job.run_id] = time.time()
    flash("success", f"Resumed {job.run_id}; it continues where it stopped.")


def job_status(job: JobFolder, progress: Progress, *, details: str, progress_text: str, show_message=True) -> None:
    """The job's name, kind and status, a line of details, its progress bar, and its last message: a failure's
    reason in full as literal text, anything else (where a cancelled job stopped, a score) as a caption."""
    if stopping(job, progress):  # the job reads the request at its next tick or batch: until then, say it was heard
        st.markdown(f"{STATUS_ICONS['cancelled']} **cancelling…**")
    else:
        st.markdown(f"{STATUS_ICONS.get(progress.status, '')} **{progress.status}**")
    engines = job.engines()
    st.text(f"{job.run_id} · {job.spec['kind']} · {details}" + (f" · engine {engines}" if engines else ""))
    st.progress(progress.fraction, text=progress_text)
    st.text(progress.summary())  # rate, elapsed time, ETA and the engine it runs on, as `cai jobs` shows them
    if progress.status == "failed":
        st.error("This run failed:", icon=":material/error:")
        st.code(progress.message, language=None, wrap_lines=True)
    elif progress.message and show_message:
        st.text(progress.message)


def job_buttons(job: JobFolder, progress: Progress, start: Starter, *, resumable: bool = True) -> None:
    """Cancel while the job is active; Resume once it has failed or been cancelled (and `resumable`).

    The action runs in the click's run and the whole page is then drawn again: inside a fragment a click
    reruns only the fragment, and the flash message is drawn at the top of the page, outside it."""
    actor = current_actor()
    if actor is None or not actor.is_operator:  # operators only: the job runner refuses anyone else anyway
        return
    if progress.status in ACTIVE and st.button("Cancel", key=f"cancel-{job.run_id}", disabled=stopping(job, progress)):
        cancel_job(job)
        st.rerun()
    elif progress.status in ("failed", "cancelled") and resumable and st.button("Resume", key=f"resume-{job.run_id}"):
        resume_job(job, start)
        st.rerun()


def job_log(job: JobFolder, *, expanded: bool = False) -> None:
    with st.expander("Log", expanded=expanded):
        st.code(job.log_tail() or "(no output yet)", language=None)


def live_panel(
    draw: Callable[[], bool], *, active: bool, refresh_key: str, redraw_page: Callable[[], bool] | None = None
) -> None:
    """Draw `draw()` (which returns whether any job is still active) and, while one is, redraw it every few
    seconds. When the last one ends the whole page is redrawn once, which stops the redrawing; with none
    active a Refresh button takes its place. `redraw_page`, asked at each redraw, redraws the whole page when
    True: what the rest of the page shows has grown (a running job's records have landed)."""

    @st.fragment(run_every=REFRESH_SECONDS if active else None)
    def panel() -> None:
        if (not draw() and active) or (redraw_page is not None and redraw_page()):
            st.rerun()

    panel()
    if not active:
        st.button("Refresh", key=refresh_key)


Describe = Callable[[JobFolder, Progress], tuple[str, str]]
"""A card's details line and progress text for a job, e.g. ("judge X · started Y", "3/10 labels")."""


def job_cards(
    jobs: Callable[[], list[JobFolder]],
    start: Starter,
    describe: Describe,
    *,
    empty: str,
    refresh_key: str,
    resumable: Callable[[JobFolder], bool] = lambda job: True,
    more_buttons: Callable[[JobFolder], None] | None = None,
    redraw_page: Callable[[], bool] | None = None,
    per_page: int = 5,
) -> None:
    """The runs a page launched, newest first, PER_PAGE cards at a time with a pager past the first page (status,
    details, progress, Cancel or Resume, the log), redrawn live while any shown is active; `jobs` is called at each
    redraw so that new runs appear. `redraw_page`: as `live_panel`'s."""
    page_key = f"{refresh_key}_page"

    def draw() -> bool:
        every = jobs()
        if not every:
            st.caption(empty)
        page = pager(page_key, len(every), per_page)
        active = False
        for job in every[(page - 1) * per_page : page * per_page]:
            progress = job.progress()
            active |= progress.status in ACTIVE
            with st.container(border=True, key=f"run-{job.run_id}"):
                details, progress_text = describe(job, progress)
                job_status(job, progress, details=details, progress_text=progress_text)
                with st.container(horizontal=True):
                    job_buttons(job, progress, start, resumable=resumable(job))
                    if more_buttons:
                        more_buttons(job)
                job_log(job)
        return active

    live_panel(
        draw,
        active=any(job.progress().status in ACTIVE for job in page_of(jobs(), page_key, per_page)),
        refresh_key=refresh_key,
        redraw_page=redraw_page,
    )
