"""Running jobs from the command line: `cai generate`, `cai resume`, `cai jobs`, `cai cancel`, `cai ingest`, and
what every job-starting command shares (prepare from flags, then run here with a progress bar or detach)."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

from .. import jobs
from ..jobs import JobBusy, JobFolder, job_kind, list_job_folders
from ..workspace import Workspace
from .flags import add_dataclass_arguments, config_from_args


def start_job(
    kind: str, args, ws: Workspace, config=None, prepared: Callable[[JobFolder], None] | None = None
) -> tuple[int, JobFolder]:
    """Prepare a job from the command's flags, or from `config` where the command made it (user errors surface
    here, before a progress bar is drawn), then start it detached with --background or run it to the end here.
    `prepared(job)` says what the new folder holds first (the data a training run snapshotted, say)."""
    config = config or config_from_args(job_kind(kind).config, args)
    job = jobs.prepare(kind, config, ws)
    if prepared:
        prepared(job)
    if args.background:
        return launch(job, ws), job
    if hasattr(config, "run_id"):  # named, it is found again as prepared, its sources not read twice
        config = dataclasses.replace(config, run_id=job.run_id)
    return run_here(kind, config, ws), job


def run_here(kind: str, config, ws: Workspace) -> int:
    from tqdm import tqdm

    folder = jobs.prepare(kind, config, ws)  # found again, not made twice: its progress.json is read below
    # The bar shows the job's own figures (rate and ETA since this process began, elapsed, engine and model), as
    # the pages and `cai jobs` do, not tqdm's: a resumed job's earlier work is not this process's rate.
    bar = tqdm(dynamic_ncols=True, bar_format=job_kind(kind).desc + ": {percentage:3.0f}%|{bar}| {desc}")

    def on_progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.set_description_str(folder.progress().summary())  # refreshes the bar

    try:
        job = jobs.run(kind, config, ws, on_progress=on_progress)
    except JobBusy as busy:
        bar.close()
        return follow(folder, busy)
    bar.close()
    return ended(job, ws)


def ended(job: JobFolder, ws: Workspace | None = None) -> int:
    """How a job run (or followed) here ended: done (its records ingested when `ws` is given and the database
    is free) and 0, or 1 with one line on stderr saying why."""
    progress = job.progress()
    if progress.status != "done":
        print(
            f"{job.run_id}: {progress.status} at {progress.done}/{progress.total}; {progress.message}", file=sys.stderr
        )
        return 1
    print(f"{job.run_id}: done, {progress.summary()}; {progress.message or f'records in {job.path}'}")
    if ws is not None:
        ingest_if_free(ws)
    return 0


def follow(job: JobFolder, busy: JobBusy) -> int:
    """Another process is doing this job's work (a second start, a second `cai resume`): show its progress
    until it ends instead of doing the work twice."""
    print(f"{busy}; following it (Ctrl-C stops following, not the run)", flush=True)
    # until it ends, or its process dies: a job killed before it began would read pending for ever
    while job.progress().status in ("pending", "running") and job.busy():
        time.sleep(1)
    return ended(job)


def launch(job: JobFolder, ws: Workspace) -> int:
    jobs.launch(job, ws)
    print(f"started {job.run_id} in the background; follow it with `cai jobs`, stop it with `cai cancel`")
    return 0


def cmd_generate(args, ws: Workspace) -> int:
    return start_job("generate", args, ws)[0]


def cmd_resume(args, ws: Workspace) -> int:
    job = JobFolder(ws.runs_dir / args.run_id)
    if not (job.path / "run.json").exists():
        raise FileNotFoundError(f"no run {args.run_id!r} under {ws.runs_dir}")
    kind = job.spec["kind"]
    return run_here(kind, job_kind(kind).config(**job.spec["config"]), ws)


def ingest_if_free(ws: Workspace) -> None:
    from ..store import Store, StoreError  # a job's process needs the store only at its end

    try:
        with Store.open(ws, wait_seconds=2) as store:
            added = store.ingest(ws.runs_dir)
        print(f"ingested {added} new records into {ws.db_path}")
    except StoreError as exc:
        print(f"{exc}\nthe records stay in the run folder; the app (or `cai ingest`) takes them in later")


def cmd_ingest(args, ws: Workspace) -> int:
    from ..store import Store

    with Store.open(ws) as store:
        added = store.ingest(ws.runs_dir)
        counts = store.counts()
    print(f"ingested {added} new records; the store holds {counts['traces']} traces, {counts['trace_steps']} steps")
    return 0


def cmd_jobs(args, ws: Workspace) -> int:
    from ..store import Store, StoreError

    listed = list_job_folders(ws.runs_dir)
    if not listed:
        print(f"no runs under {ws.runs_dir}")
    for job in listed:
        p = job.progress()
        kind, engines = job.spec["kind"], job.engines() or "-"
        print(f"{job.run_id:<24} {kind:<11} {engines:<6} {p.status:<10} {p.summary()}  {p.message}".rstrip())
    try:
        with Store.open(ws, wait_seconds=2) as store:
            store.ingest(ws.runs_dir)
            problems = store.ingest_problems()
    except StoreError:
        problems = []  # the app holds the database: its home page lists them
    for problem in problems:
        print(f"kept out: {problem}", file=sys.stderr)
    return 0


def cmd_cancel(args, ws: Workspace) -> int:
    job = JobFolder(ws.runs_dir / args.run_id)
    if not job.path.exists():
        raise FileNotFoundError(f"no run {args.run_id!r} under {ws.runs_dir}")
    job.request_cancel()
    print(f"asked {args.run_id} to stop after its current batch")
    return 0


def add_job_parser(sub, name: str, kind: str, help_text: str, func) -> None:
    """A command that starts a job: its config's flags, and --background."""
    p = sub.add_parser(name, help=help_text)
    add_dataclass_arguments(p, job_kind(kind).config)
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=func)


def add_parsers(sub) -> None:
    add_job_parser(sub, "generate", "generate", "Run SL-CAI: answers, then critique→revision rounds.", cmd_generate)
    p = sub.add_parser("resume", help="Continue a run from where it stopped.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("jobs", help="List runs and their progress.")
    p.set_defaults(func=cmd_jobs)
    p = sub.add_parser("cancel", help="Ask a running job to stop after its current batch.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("ingest", help="Take finished jobs' records into the database.")
    p.set_defaults(func=cmd_ingest)
