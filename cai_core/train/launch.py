"""Preparing, running and launching a training run, the part of the harness every algorithm shares.

A training run is a job folder (see `cai_core.jobs`), so progress, cancel, the log, detached launch and
the store's `runs` table work as they do for generation:

    runs/<run_id>/run.json            kind (train-sft, ...), base model, config
    runs/<run_id>/config.yaml         the config, as `cai train KIND --config` reads it back
    runs/<run_id>/data-<split>.jsonl  the training data, snapshotted when the run was prepared
    runs/<run_id>/train_metrics.jsonl every logged number (loss, reward, kl, ...), ingested by the store; a
                                      journal: a step logged again after a resume supersedes the discarded one
    runs/<run_id>/ranks.jsonl         one line per process at the end: rank, world size, a digest of the weights
    runs/<run_id>/checkpoints/        checkpoint-<step> folders; a rerun resumes from the last one
    runs/<run_id>/final/              the trained model: a local folder, so a model spec on every page

The data is snapshotted by whoever prepares the run (the CLI or the app, which may open the database),
because the training process never opens the database. The run id hashes the config and the data, so
the same command after a kill or a cancel resumes the same run, and new data makes a new run. A config or
data problem is refused before the folder exists: a refused start records nothing.

With `nproc` > 1 (or an accelerate config) the run's own process is a supervisor: it does what must happen
once (cancel before start, repairs), then starts the ranks through `torchrun` (or `accelerate launch`) and
waits for them. Rank 0 writes every record; every rank reads the cancel file, and they agree to stop.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ..job_folder import identity_settings
from ..jobs import JobFolder, run_id_for
from ..workspace import Workspace, write_file_atomically
from .algorithms import algorithm, config_class
from .config import LoraOptions, TrainConfig, TrainError, config_from_dict
from .context import RunContext, rank
from .models import RewardFn, check_lora_targets, finished_model


def prepare_train_job(config: TrainConfig, ws: Workspace | None = None) -> JobFolder:
    """Snapshot the data and create (or find) the run's folder (the config checked itself when it was made). A
    data problem raises TrainError before anything is written: a refused start leaves no run behind."""
    ws = ws or Workspace.from_env()
    # what it starts from, not a value: a config file may leave the reward to the command's flag
    if config.needs_reward_model and not config.reward_model:
        raise TrainError(f"{config.kind.upper()} needs a reward (a reward model or a function)", "reward_model")
    if isinstance(config, LoraOptions):
        check_lora_targets(config, ws)
    try:
        frames = config.build_data(ws)
    except TrainError:
        raise
    except (OSError, KeyError, ValueError) as exc:  # an unreadable file, a missing column: said in one line
        raise TrainError(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)) from None
    payloads = {
        split: frame.to_json(orient="records", lines=True, force_ascii=False) for split, frame in frames.items()
    }
    digest = hashlib.sha256("".join(f"{k}\0{v}" for k, v in sorted(payloads.items())).encode()).hexdigest()
    identity = {**identity_settings(config.to_dict()), "kind": config.kind, "data": digest}
    run_id = config.run_id or run_id_for(config.kind, identity)
    job = JobFolder.create(
        ws.runs_dir,
        run_id,
        {"kind": f"train-{config.kind}", "model": config.model, "config": {**config.to_dict(), "run_id": run_id}},
    )
    config_text = yaml.safe_dump({**config.to_dict(), "run_id": run_id}, sort_keys=False)
    write_file_atomically(job.path / "config.yaml", lambda out: out.write(config_text.encode("utf-8")))
    for split, payload in payloads.items():
        path = job.path / f"data-{split}.jsonl"
        if not path.exists():
            write_file_atomically(path, lambda out, payload=payload: out.write(payload.encode("utf-8")))
    return job


def job_config(job: JobFolder) -> TrainConfig:
    kind = job.spec["kind"].removeprefix("train-")
    return config_from_dict(config_class(kind), job.spec["config"])


def run_train_job(
    job: JobFolder,
    ws: Workspace | None = None,
    *,
    callbacks: list | None = None,
    reward_fn: RewardFn | None = None,
) -> JobFolder:
    """Run (or resume) a prepared run to its end, a cancel or a failure; returns its folder. A run of several
    processes is started here as `torchrun` (or `accelerate launch`) over `python -m cai_core.train`."""
    ws = ws or Workspace.from_env()
    config = job_config(job)
    progress = job.recorded_progress()
    if progress.status == "done" and finished_model(job.path):
        return job
    if job.cancel_requested() and progress.status == "pending":
        job.set_progress("cancelled", 0, config.max_steps, "cancelled before it started; run it again to start it")
        job.clear_cancel()
        return job
    job.clear_cancel()  # an old, already honoured request: running again means resuming
    job.repair()
    if config.nproc > 1 or config.accelerate_config:
        return _supervise_ranks(job, config, ws)
    return run_rank(job, ws, callbacks=callbacks, reward_fn=reward_fn)


def run_rank(
    job: JobFolder, ws: Workspace, *, callbacks: list | None = None, reward_fn: RewardFn | None = None
) -> JobFolder:
    """One process's share of the run (all of it in a one-process run)."""
    config = job_config(job)
    ctx = RunContext(job, config, ws, list(callbacks or []), reward_fn)
    ctx.progress(job.progress().done, "starting")
    try:
        algorithm(config.kind).train(ctx)
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        reason = f"{type(exc).__name__}: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}"
        if ctx.main:
            job.set_progress(status, job.progress().done, config.max_steps, reason)
        if os.environ.get("WORLD_SIZE", "1") != "1" and status == "failed":
            job.append("ranks", [{"rank": rank(), "error": reason}])  # the supervisor reports the first
        raise
    return job


def rank_command(job: JobFolder, ws: Workspace) -> list[str]:
    """The command that starts a run's processes: `accelerate launch` with the user's config, else `torchrun`."""
    worker = ["-m", "cai_core.train", *ws.cli_args(), job.run_id]
    config = job.spec["config"]
    nproc = config.get("nproc", 1)
    if config.get("accelerate_config"):
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config["accelerate_config"]]
        return [*launch, *(["--num_processes", str(nproc)] if nproc > 1 else []), *worker]
    port = ["--master_port", str(_free_port())]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *port, *worker]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supervise_ranks(job: JobFolder, config: TrainConfig, ws: Workspace) -> JobFolder:
    job.set_progress("running", job.progress().done, config.max_steps, f"starting {config.nproc} processes")
    earlier = len(job.read("ranks"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.call(rank_command(job, ws), env=env, cwd=Path(__file__).resolve().parents[2])
    if code == 0 or job.progress().status == "cancelled":
        return job
    errors = [r for r in job.read("ranks")[earlier:] if "error" in r]
    reason = (
        f"rank {errors[0]['rank']}: {errors[0]['error']}"
        if errors
        else f"a training process exited with code {code}; its error is in the run's log"
    )
    job.set_progress("failed", job.progress().done, config.max_steps, reason)
    raise TrainError(reason)


def train(config: TrainConfig, ws: Workspace | None = None, **kwargs) -> JobFolder:
    """Prepare and run in this process (tests, notebooks); `launch_train_job` runs it detached."""
    ws = ws or Workspace.from_env()
    return run_train_job(prepare_train_job(config, ws), ws, **kwargs)


def launch_command(job: JobFolder, ws: Workspace) -> list[str]:
    """`cai train resume RUN_ID`: it starts the ranks itself when the run has several."""
    return [sys.executable, "-m", "cai_core.cli", *ws.cli_args(), "train", "resume", job.run_id]


def launch_train_job(job: JobFolder, ws: Workspace) -> subprocess.Popen:
    """Start the run detached: closing the page or the terminal does not stop it."""
    return job.start(launch_command(job, ws))
