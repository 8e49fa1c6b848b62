"""Long work in the background: the job kinds, and how any of them is prepared, run and launched.

Every job (generate, pairs, label, eval, ..., and each training algorithm: train-sft, train-rm, ...) is one
`JobKind`, defined in its own module and registered in `KINDS` (a training algorithm in `TRAINING_ALGORITHMS`) by
one line. The CLI's job commands, `cai resume`, the pages, the recipe's stages and the A/B's stages all start a job
through `prepare`, `run` and `launch` here; a kind gives only what is its own:
- its config class (a dataclass with a `run_id` field);
- `plan(config, workspace, **sources)`: check the config and read what the job works on, returned as a `Plan`
  (the model, the inputs to copy into the folder, the facts that define the run besides its config);
- `work(job, config, workspace, **options)`: the `Work` the runner drives (`job_runner.run_job`); or, for a kind
  whose loop is its own (training: TRL's trainer, over one process or several), a `runner` that runs the prepared
  job, and whatever `work` that runner calls.
The framework owns the rest: finding a named run prepared already, the run id (a digest of the config, the
plan's identity and its inputs), the folder (`job_folder.JobFolder`), the run to its end, the detached launch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import Popen

from .job_folder import (
    STATUSES,
    Cancelled,
    JobBusy,
    JobFolder,
    Progress,
    digest,
    list_job_folders,
    run_id_for,
    write_json_atomic,
)
from .job_runner import (
    PipelinedWork,
    StagedWork,
    StageFailed,
    Work,
    begin,
    engine_name,
    in_flight_for,
    is_done,
    progress_batch_size,
    run_job,
)
from .key_set import KeySet
from .workspace import Workspace

__all__ = [
    "STATUSES",
    "Cancelled",
    "JobBusy",
    "JobFolder",
    "KeySet",
    "PipelinedWork",
    "Progress",
    "StageFailed",
    "StagedWork",
    "Work",
    "begin",
    "digest",
    "engine_name",
    "in_flight_for",
    "is_done",
    "list_job_folders",
    "progress_batch_size",
    "run_id_for",
    "run_job",
    "write_json_atomic",
]

# The training algorithms, and the modules that define them as kinds (`train.launch.training_kind`). Each is the kind
# `training_kind_name(algorithm)`: what the runs query, the Train page, `cai train` and the recipe list and start.
TRAINING_ALGORITHMS = {
    "sft": "train.sft:SFT",
    "rm": "train.reward:RM",
    "ppo": "train.ppo:PPO",
    "dpo": "train.dpo:DPO",
    "grpo": "train.grpo:GRPO",
    "rloo": "train.grpo:RLOO",
}
_TRAINING = "train-"


def training_kind_name(algorithm: str) -> str:
    """The kind of a training run of `algorithm` (sft: train-sft), as run.json and the store name it."""
    return _TRAINING + algorithm


def training_algorithm(kind: str) -> str | None:
    """The algorithm a training run's kind runs (train-sft: sft), registered now or not (a run an older version
    made); None for a kind that is not training."""
    return kind.removeprefix(_TRAINING) if kind.startswith(_TRAINING) else None


TRAINING_KINDS = tuple(training_kind_name(algorithm) for algorithm in TRAINING_ALGORITHMS)

# Each kind's name, and the module (with the name it has there) that defines it: imported when the kind is first
# asked for, so that a command or a page loads only the kinds it uses.
KINDS = {
    "generate": "critique:GENERATE",
    "pairs": "pairs:SAMPLE",
    "label": "feedback:LABEL",
    "eval": "evaluation:EVAL",
    "eval-rounds": "evaluation:ROUNDS",
    "calibrate": "judge_audit:CALIBRATE",
    "ab": "ab:AB",
    "ab-judge": "ab:AB_JUDGE",
    "recipe": "recipe.stages:RECIPE",
    "export": "export_job:EXPORT",
    "inspect": "inspect_eval:INSPECT",
    **{training_kind_name(algorithm): where for algorithm, where in TRAINING_ALGORITHMS.items()},
}


@dataclass(frozen=True)
class Plan:
    """What a kind's `plan` found: the framework makes the job's folder from it."""

    model: str  # the model the job runs (run.json's `model`)
    identity: dict = field(default_factory=dict)  # what defines the run besides its config and inputs
    inputs: dict[str, list[dict]] = field(default_factory=dict)  # copied into the folder once; part of the identity
    constitution: object | None = None  # a Constitution, snapshotted into run.json; its version is in the identity
    config: object | None = None  # the config as the job keeps it, where the plan names the run itself
    then: Callable[[JobFolder], None] | None = None  # what else the kind writes into its new folder


@dataclass(frozen=True)
class JobKind:
    name: str  # run.json's kind; the CLI command that starts it, but for training's (`cai train sft` starts train-sft)
    config: type
    plan: Callable[..., Plan | JobFolder]  # a kind whose run id is not a digest makes its folder itself
    work: Callable[..., Work]  # with a `runner`: what that runner calls (a training algorithm's `train(ctx)`)
    desc: str  # the name on the CLI's progress bar
    prefix: str | None = None  # the run id's prefix; the kind's name by default
    input: str | None = None  # the input whose presence in a named run's folder means it is prepared already
    sources: tuple[str, ...] = ()  # the keyword arguments of `run` that go to `plan`; the others go to `work`
    # runs a prepared job itself, where the loop is the kind's own: (job, workspace, on_progress=, **options)
    runner: Callable[..., JobFolder] | None = None


def job_kind(name: str) -> JobKind:
    if name not in KINDS:
        raise ValueError(f"unknown job kind {name!r}; known: {', '.join(KINDS)}")
    module, attribute = KINDS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)


def prepare(name: str, config, workspace: Workspace, **sources) -> JobFolder:
    """Create (or find) a job's folder: the same config and inputs again find the same run."""
    kind = job_kind(name)
    named = getattr(config, "run_id", None)
    if named and kind.input and (existing := JobFolder(workspace.runs_dir / named)).has_input(kind.input):
        return existing  # its inputs are what it works through, whatever its sources hold now
    plan = kind.plan(config, workspace, **sources)
    if isinstance(plan, JobFolder):
        return plan
    identity = plan.identity | {input_name: digest(rows) for input_name, rows in plan.inputs.items()}
    job = JobFolder.prepare(
        workspace.runs_dir,
        kind.name,
        plan.config or config,
        identity,
        model=plan.model,
        constitution=plan.constitution,
        inputs=plan.inputs,
        prefix=kind.prefix,
    )
    if plan.then:
        plan.then(job)
    return job


def run(
    name: str,
    config,
    workspace: Workspace | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    **given,
) -> JobFolder:
    """Prepare the job, then run (or resume) it here to its end, a cancel or a failure; returns its folder.
    `given` holds the kind's sources (for `plan`) and options (for `work`: a backend already loaded, say)."""
    kind = job_kind(name)
    workspace = workspace or Workspace.from_env()
    job = prepare(name, config, workspace, **{k: v for k, v in given.items() if k in kind.sources})
    options = {k: v for k, v in given.items() if k not in kind.sources}
    if kind.runner:
        return kind.runner(job, workspace, on_progress=on_progress, **options)
    return run_job(job, lambda: kind.work(job, config, workspace, **options), on_progress=on_progress)


def launch(job: JobFolder, workspace: Workspace) -> Popen:
    """`cai resume RUN_ID` detached, as `--background` and the pages start a job: closing the page or the app
    does not stop it; a new job starts, a stopped one continues."""
    return job.start([sys.executable, "-m", "cai_core.cli", *workspace.cli_args(), "resume", job.run_id])
