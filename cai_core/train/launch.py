"""A training run as a job kind of the one registry (`cai_core.jobs.KINDS`): the part every algorithm shares.

Each algorithm's module ends with its kind, `training_kind(ITS_CONFIG, its_train)`, registered by one line in
`jobs.TRAINING_ALGORITHMS`. The registry then prepares it (the run id is the framework's digest of the config and the
data snapshot), launches it (`cai resume RUN_ID`, detached) and runs it (`jobs.run`), as any kind; what is a training
run's own is here: the data snapshot (`plan`) and the run itself (`run_train_job`), whose loop is TRL's trainer.

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

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import yaml

from .. import jobs
from ..jobs import JobFolder, JobKind, Plan
from ..workspace import Workspace, write_file_atomically
from .config import LoraOptions, TrainConfig, TrainError, config_from_dict
from .context import RunContext, rank
from .models import RewardFn, check_lora_targets, finished_model

# the algorithms' own names (sft, rm, ...), in the registry's order: the CLI's `cai train KIND` and the Train page's
KINDS: tuple[str, ...] = tuple(jobs.TRAINING_ALGORITHMS)


def training_kind(config: type[TrainConfig], train: Callable[[RunContext], None]) -> JobKind:
    """An algorithm's job kind: its config, and `train(ctx)`, which a rank runs (`run_rank`) inside the run."""
    return JobKind(
        jobs.training_kind_name(config.kind),
        config,
        plan,
        train,
        config.kind.upper(),
        prefix=config.kind,
        input="data-train",  # a named run with its snapshot is prepared already: it is not read again
        runner=run_train_job,
    )


def config_class(kind: str) -> type[TrainConfig]:
    """The config of the algorithm named `kind` (sft, rm, ...)."""
    if kind not in KINDS:
        raise TrainError(f"unknown training kind {kind!r}; choose one of {', '.join(KINDS)}")
    return jobs.job_kind(jobs.training_kind_name(kind)).config


def plan(config: TrainConfig, ws: Workspace) -> Plan:
    """Snapshot the data (the config checked itself when it was made). A data problem raises TrainError before
    anything is written: a refused start leaves no run behind."""
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
    return Plan(config.model, {"kind": config.kind, "data": digest}, then=partial(_write_snapshot, payloads))


def _write_snapshot(payloads: dict[str, str], job: JobFolder) -> None:
    """The config as YAML beside the data it trains on; the data written once, so a resume trains on the same."""
    config_text = yaml.safe_dump(job.spec["config"], sort_keys=False)
    write_file_atomically(job.path / "config.yaml", lambda out: out.write(config_text.encode("utf-8")))
    for split, payload in payloads.items():
        path = job.path / f"data-{split}.jsonl"
        if not path.exists():
            write_file_atomically(path, lambda out, payload=payload: out.write(payload.encode("utf-8")))


def job_config(job: JobFolder) -> TrainConfig:
    return config_from_dict(jobs.job_kind(job.spec["kind"]).config, job.spec["config"])


def run_train_job(job: JobFolder, ws: Workspace, **options) -> JobFolder:
    """Run (or resume) a prepared run to its end, a cancel or a failure; returns its folder. A run of several
    processes is started here as `torchrun` (or `accelerate launch`) over `python -m cai_core.train`. Its first
    steps are every job's (`jobs.begin`); a finished run is not trained again. `options` go to `run_rank`. Raises
    JobBusy when another process runs it."""
    # Under `accelerate launch` every rank runs this; the main one holds the run's lock for them all.
    with job.exclusive() if rank() == 0 else contextlib.nullcontext():
        if job.recorded_progress().status == "done" and finished_model(job.path):
            return job
        if not jobs.begin(job):
            return job
        config = job_config(job)
        if config.nproc > 1 or config.accelerate_config:
            return _supervise_ranks(job, config, ws)
        return run_rank(job, ws, **options)


def run_rank(
    job: JobFolder,
    ws: Workspace,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    callbacks: list | None = None,
    reward_fn: RewardFn | None = None,
) -> JobFolder:
    """One process's share of the run (all of it in a one-process run)."""
    config = job_config(job)
    ctx = RunContext(job, config, ws, list(callbacks or []), reward_fn, on_progress=on_progress)
    ctx.progress(job.progress().done, "starting")
    try:
        jobs.job_kind(job.spec["kind"]).work(ctx)
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


def train(config: TrainConfig, ws: Workspace | None = None, **options) -> JobFolder:
    """Prepare and run in this process (tests, notebooks); `options` go to `run_train_job`."""
    return jobs.run(jobs.training_kind_name(config.kind), config, ws or Workspace.from_env(), **options)
