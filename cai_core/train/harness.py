"""The run harness every training algorithm shares.

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

import dataclasses
import hashlib
import importlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
import yaml

from ..jobs import JobFolder, run_id_for
from ..records import TrainedModel, TrainMetric, to_row
from ..workspace import Workspace


class TrainError(ValueError):
    """A run cannot start or go on for a reason the user can fix (config, data, model); one line.

    `field` names the config field at fault, when one is: each door names it its own way (the CLI as a flag,
    the Train page as the form's label, a YAML file as its key, which is what `str()` gives)."""

    def __init__(self, problem: str, field: str | None = None):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.problem, self.field = problem, field

    def named(self, name: str) -> str:
        """The message with the field called `name` (a flag, a form label)."""
        return f"{name}: {self.problem}" if self.field else str(self)


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def check_run_id(run_id: str) -> str:
    """A run id is a slug (one folder name under runs/), so that no door can write outside the workspace."""
    if not RUN_ID.match(run_id):
        raise TrainError(
            f"{run_id!r} is not a run id: use letters, digits, '.', '_' and '-', starting with a letter or digit",
            "run_id",
        )
    return run_id


# --- configs ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """What every algorithm shares. Defaults run on a CPU in minutes with the default model.

    A field's metadata holds its `help` (the CLI's and the form's) and, where the field's name does not read
    as words, a `label` for the form."""

    kind: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: what the CLI's `cai train --help` and the Train page say

    model: str = field(
        default="default",
        metadata={
            "help": "Model to train: default, a local folder, a hub id, or a finished run's id. Training always runs "
            "on transformers, so it takes no hf: or vllm: engine prefix."
        },
    )
    dataset: str = field(
        default="store",
        metadata={"help": "store (exported from the database when prepared), or a jsonl/parquet/datasets path."},
    )
    max_steps: int = field(default=50, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=4, metadata={"help": "Examples (PPO: rollouts) per step and process."})
    grad_accum: int = field(
        default=1, metadata={"help": "Gradient accumulation steps.", "label": "Gradient accumulation"}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    max_length: int = field(
        default=512, metadata={"help": "Longest tokenised example; longer ones are cut.", "label": "Max tokens"}
    )
    save_steps: int = field(
        default=25, metadata={"help": "Write a checkpoint every N steps (and on cancel).", "label": "Checkpoint every"}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N steps.", "label": "Log every"})
    seed: int = field(default=0, metadata={"help": "Seed for data order, initialisation and sampling."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "auto: bf16 mixed precision on a GPU, fp32 on a CPU.", "label": "Precision"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory (worth it for large models on a GPU)."}
    )
    nproc: int = field(
        default=1,
        metadata={
            "help": "Processes (data parallel): one per GPU, or CPU processes through torchrun (gloo).",
            "label": "Processes",
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "An `accelerate config` YAML: start through `accelerate launch` (DDP/FSDP/DeepSpeed).",
            "label": "Accelerate config file",
        },
    )
    run_id: str | None = field(
        default=None,
        metadata={
            "help": "Run name; by default a hash of config and data, so rerunning resumes.",
            "label": "Run id",
        },
    )

    def check(self) -> None:
        """Raise TrainError for values no run could use."""
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps", "nproc"):
            if getattr(self, name) < 1:
                raise TrainError(f"is {getattr(self, name)}: it must be at least 1", name)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise TrainError(f"is {self.learning_rate}: it must be a positive number", "learning_rate")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise TrainError(f"{self.accelerate_config}: no such file", "accelerate_config")
        if self.nproc > 1 and not self.accelerate_config:
            devices, what = device_count()
            if self.nproc > devices:
                raise TrainError(f"is {self.nproc}, but this machine has {devices} {what}", "nproc")
        if self.run_id is not None:
            check_run_id(self.run_id)

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        """The run's data by split ("train", maybe "eval"); called when the run is prepared."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LoraOptions:
    """LoRA adapters (peft) instead of full fine-tuning, declared once for every algorithm that takes them."""

    lora: bool = field(
        default=False, metadata={"help": "Train LoRA adapters (merged into the final model).", "label": "LoRA"}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank.", "label": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha.", "label": "LoRA alpha"})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "The modules LoRA adapts: all-linear, or their names, comma-separated (q_proj,v_proj).",
            "label": "LoRA modules",
        },
    )

    @property
    def lora_targets(self) -> str | list[str]:
        if self.lora_target_modules == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]

    def peft_config(self, task_type: str):
        if not self.lora:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=0.05,
            target_modules=self.lora_targets,
            task_type=task_type,
        )

    def check_lora_targets(self, ws: Workspace) -> None:
        """Refuse, before anything starts, LoRA modules the model does not have (built on the meta device: no
        weights are read)."""
        if not self.lora or self.lora_targets == "all-linear":
            return
        model_path = resolve_model(self.model, ws)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
        linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        missing = [t for t in self.lora_targets if t not in linear]
        if missing or not self.lora_targets:
            raise TrainError(
                f"{', '.join(missing) or 'none given'}: not linear modules of {model_path}; it has "
                f"{', '.join(sorted(linear))}",
                "lora_target_modules",
            )


def device_count() -> tuple[int, str]:
    """How many processes this machine can give one device each: GPUs, else CPU cores."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return os.cpu_count() or 1, "CPU cores"


def form_label(f: dataclasses.Field) -> str:
    """A config field's name as words, for a form."""
    return f.metadata.get("label") or f.name.replace("_", " ").capitalize()


def config_from_dict(cls: type[TrainConfig], data: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainError(f"unknown {cls.kind} config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        # YAML reads 1e-5 as a string; a typed field says what was meant
        if isinstance(value, str) and float in (hints[name], *typing.get_args(hints[name])):
            try:
                value = float(value)
            except ValueError:
                raise TrainError(f"{value!r} is not a number", name) from None
        values[name] = value
    return cls(**values)


def config_from_args_given(cls: type[TrainConfig], args) -> dict:
    """The config fields present on an argparse namespace (flags the user gave)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def load_config_file(cls: type[TrainConfig], path: str | Path, overrides: dict | None = None) -> TrainConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise TrainError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TrainError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return config_from_dict(cls, {**data, **(overrides or {})})


# --- models, rewards, checkpoints ------------------------------------------------------------------


def finished_model(run_folder: Path) -> Path | None:
    """A run's trained model folder, once it is finished: `final/` is renamed into place whole, so its
    config.json is there only when every file is."""
    final = Path(run_folder) / "final"
    return final if (final / "config.json").exists() else None


def checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-<step>` folders under `folder`, oldest step first (half-written `.tmp` ones aside)."""
    steps = {p: p.name.removeprefix("checkpoint-") for p in Path(folder).glob("checkpoint-*")}
    return sorted((p for p, step in steps.items() if step.isdigit()), key=lambda p: int(steps[p]))


def resolve_model(spec: str, ws: Workspace) -> str:
    """A model spec as a folder transformers can load: default, a finished run's id, or a path."""
    if spec == "default":
        from ..backends import ensure_default_model

        return str(ensure_default_model(ws.models_dir))
    if RUN_ID.match(spec) and (final := finished_model(ws.runs_dir / spec)):
        return str(final)
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if not (path / "config.json").exists():
            raise TrainError(f"model {spec}: the folder has no config.json, so it is not a transformers model")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE", "1") != "0":
        raise TrainError(f"model {spec}: no such folder or finished run (hub ids need HF_HUB_OFFLINE=0)")
    return spec


RewardFn = Callable[..., list[float]]
_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
REWARD_FUNCTIONS_ENV = "CAI_REWARD_FUNCTIONS"


def registered_reward_functions() -> list[str]:
    """The reward callables (`module:function`) the operator lets the Train page offer, from the environment
    variable CAI_REWARD_FUNCTIONS (comma-separated). The browser never names a callable itself: importing a
    module runs its code. The CLI and config files may name any."""
    specs = [s.strip() for s in os.environ.get(REWARD_FUNCTIONS_ENV, "").split(",") if s.strip()]
    return [s for s in specs if _CALLABLE_SPEC.match(s)]


def reward_choices(runs: pd.DataFrame) -> dict[str, str]:
    """What the Train page offers as a reward, spec → label: every finished reward model in the registry
    (`Store.train_runs()`), newest first, then the operator's registered callables."""
    finished = runs[(runs.kind == "train-rm") & runs.model_path.notna()] if not runs.empty else runs
    choices = {r.run_id: f"reward model {r.run_id} · step {r.final_step}" for r in finished.itertuples()}
    choices.update({spec: f"{spec} (registered function)" for spec in registered_reward_functions()})
    return choices


def latest_finished(runs: pd.DataFrame, kind: str) -> str | None:
    """The newest finished run of a kind (`sft`, ...), by run id: a model spec for the next stage."""
    if runs.empty:
        return None
    finished = runs[(runs.kind == f"train-{kind}") & runs.model_path.notna()]
    return None if finished.empty else str(finished.run_id.iloc[0])


def resolve_reward(spec: str, ws: Workspace) -> str | RewardFn:
    """`module:function` is a Python reward `(prompts, completions, **kw) -> list[float]`, as TRL's
    `reward_funcs` take; anything else is a sequence-classification model spec."""
    if not spec:
        raise TrainError("this algorithm needs a reward", "reward_model")
    if is_callable_spec(spec):
        return import_callable(spec, "reward_model")
    return resolve_model(spec, ws)


def is_callable_spec(spec: str) -> bool:
    return bool(_CALLABLE_SPEC.match(spec)) and not Path(spec).exists()


def import_callable(spec: str, field: str) -> Callable:
    """`module:function`, imported: from the CLI and config files only, since importing runs the module's code."""
    module, name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TrainError(f"{spec}: {exc}", field) from None
    if not callable(fn):
        raise TrainError(f"{spec}: not callable", field)
    return fn


def use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.dtype == "bfloat16":
        return True
    return config.dtype == "auto" and torch.cuda.is_available()


# --- preparing, running, launching -----------------------------------------------------------------


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def prepare_train_job(config: TrainConfig, ws: Workspace | None = None) -> JobFolder:
    """Check the config, snapshot the data and create (or find) the run's folder. A config or data problem
    raises TrainError before anything is written: a refused start leaves no run behind."""
    ws = ws or Workspace.from_env()
    config.check()
    if isinstance(config, LoraOptions):
        config.check_lora_targets(ws)
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
    identity = {**config.to_dict(), "kind": config.kind, "data": digest, "run_id": None}
    run_id = config.run_id or run_id_for(config.kind, identity)
    job = JobFolder.create(
        ws.runs_dir,
        run_id,
        {"kind": f"train-{config.kind}", "model": config.model, "config": {**config.to_dict(), "run_id": run_id}},
    )
    (job.path / "config.yaml").write_text(
        yaml.safe_dump({**config.to_dict(), "run_id": run_id}, sort_keys=False), encoding="utf-8"
    )
    for split, payload in payloads.items():
        path = job.path / f"data-{split}.jsonl"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(payload, encoding="utf-8")
            os.replace(tmp, path)
    return job


def job_config(job: JobFolder) -> TrainConfig:
    from . import config_class

    kind = job.spec["kind"].removeprefix("train-")
    return config_from_dict(config_class(kind), job.spec["config"])


@dataclass
class RunContext:
    """What an algorithm's `train` gets: its job folder, config, workspace and the harness's services."""

    job: JobFolder
    config: TrainConfig
    ws: Workspace
    callbacks: list = field(default_factory=list)
    reward_fn: RewardFn | None = None
    started: tuple[float, int] | None = None  # (monotonic time, step) of this process's first progress report
    warning: str = ""  # the run's latest warning (the reward-hacking monitor's): its message until it ends
    stop_reason: str = ""  # why the run stopped itself before max_steps, if it did

    @property
    def checkpoints_dir(self) -> Path:
        return self.job.path / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.job.path / "final"

    @property
    def main(self) -> bool:
        return rank() == 0

    def dataset(self, split: str = "train"):
        import datasets

        path = self.job.path / f"data-{split}.jsonl"
        if not path.exists():
            return None
        return datasets.Dataset.from_json(str(path))

    def last_checkpoint(self) -> Path | None:
        found = checkpoints(self.checkpoints_dir)
        return found[-1] if found else None

    def log_metrics(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        rows = [
            to_row(TrainMetric(self.job.run_id, int(step), name, float(value)))
            for name, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        self.job.append("train_metrics", rows)

    def progress(self, step: int, message: str = "") -> None:
        """Report the step, with the rate since this process began (a resumed run's earlier steps do not count)
        and the ETA it gives."""
        if self.main:
            self.job.set_progress("running", step, self.config.max_steps, message or self.warning, **self.timing(step))

    def timing(self, step: int) -> dict:
        """Progress's unit, rate, ETA and elapsed time at STEP, counted from this process's first report."""
        now_ = time.monotonic()
        self.started = self.started or (now_, step)
        elapsed, steps = now_ - self.started[0], step - self.started[1]
        rate = steps / elapsed if steps > 0 and elapsed > 0 else None
        eta = (self.config.max_steps - step) / rate if rate else None
        return {"unit": "step", "rate": rate, "eta": eta, "elapsed": elapsed}

    def stop_requested(self) -> bool:
        """The cancel file, as every rank agrees on it: one rank stopping alone would leave the others
        waiting for it in the next collective."""
        wanted = self.job.cancel_requested()
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return wanted
        import torch

        flag = torch.tensor([1.0 if wanted else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def report_rank(self, model, step: int) -> None:
        """Every rank says it ran and which weights it ended with (equal on every rank when the gradients were
        synchronised): one line each in ranks.jsonl. The fingerprint reads each tensor's first 4096 values and
        its sum, not every byte (a 7B model's weights would be copied to the CPU); sharded weights (FSDP)
        differ by rank by design and get none."""
        import torch
        import torch.distributed as dist

        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if hasattr(tensor, "to_local"):
                digest = None
                break
            digest.update(name.encode())
            digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
            digest.update(str(torch.sum(tensor.detach(), dtype=torch.float64).item()).encode())
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        weights = digest.hexdigest() if digest else None
        self.job.append("ranks", [{"rank": rank(), "world_size": world, "step": step, "weights": weights}])

    def finish(self, model_path: Path, step: int, message: str = "") -> None:
        if not self.main:
            return
        record = TrainedModel(self.job.run_id, self.job.spec["kind"], str(model_path), self.config.model, step)
        self.job.append("trained_models", [to_row(record)])
        # the rate and elapsed time stay on the finished run's card, as `run_job`'s jobs keep theirs
        self.job.set_progress(
            "done", step, self.config.max_steps, message or f"model in {model_path}", **self.timing(step)
        )

    def cancelled(self, step: int, reason: str = "") -> None:
        if self.main:
            why = reason or self.stop_reason or f"cancelled at step {step}"
            self.job.set_progress("cancelled", step, self.config.max_steps, f"{why}; run it again to resume")


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
    from . import algorithm

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


# --- the TRL / transformers Trainer path ----------------------------------------------------------


def trainer_arguments(ctx: RunContext) -> dict:
    """The TrainingArguments every TRL trainer here shares."""
    import torch

    c = ctx.config
    return {
        # on a CPU, several processes are data parallel (gloo) only when the Trainer is told it runs on the CPU
        "use_cpu": not torch.cuda.is_available(),
        "output_dir": str(ctx.checkpoints_dir),
        "max_steps": c.max_steps,
        "per_device_train_batch_size": c.batch_size,
        "gradient_accumulation_steps": c.grad_accum,
        "learning_rate": c.learning_rate,
        "logging_steps": c.logging_steps,
        "save_strategy": "steps",
        "save_steps": c.save_steps,
        "save_total_limit": 2,
        "seed": c.seed,
        "bf16": use_bf16(c),
        "gradient_checkpointing": c.gradient_checkpointing,
        "report_to": "none",
        "disable_tqdm": True,
    }


def job_callback(ctx: RunContext):
    """Spools every log, keeps progress current and turns the cancel file into a stop with a checkpoint."""
    from transformers import TrainerCallback

    class JobCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            ctx.progress(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            ctx.log_metrics(state.global_step, logs or {})

        def on_step_end(self, args, state, control, **kwargs):
            ctx.progress(state.global_step)
            if ctx.stop_requested():
                control.should_training_stop = True
                control.should_save = True

    return JobCallback()


def run_trainer(ctx: RunContext, trainer, tokenizer, evaluate: Callable[[], str] | None = None) -> None:
    """Train from the last checkpoint (if any) to max_steps or a cancel, then save the final model.
    `evaluate` runs after training and before the save; what it returns ends up in the run's message."""
    trainer.add_callback(job_callback(ctx))
    for callback in ctx.callbacks:
        trainer.add_callback(callback)
    last = ctx.last_checkpoint()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    step = trainer.state.global_step
    model = trainer.accelerator.unwrap_model(trainer.model)
    ctx.report_rank(model, step)
    if step < ctx.config.max_steps:
        ctx.cancelled(step)
        return
    message = evaluate() if evaluate else ""
    save_final(ctx, model, tokenizer)
    ctx.finish(ctx.final_dir, step, message)


def save_final(ctx: RunContext, model, tokenizer) -> None:
    """A plain transformers folder: LoRA adapters are merged in so that every loader takes it."""
    if not ctx.main:
        return
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = ctx.final_dir.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(ctx.final_dir, ignore_errors=True)
    os.replace(tmp, ctx.final_dir)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --- data from the store ---------------------------------------------------------------------------


def store_rows(ws: Workspace, kind: str, **filters) -> pd.DataFrame:
    """An export (see `cai_core.exports`) from the database, after taking in finished jobs' records."""
    from ..exports import export_rows
    from ..store import Store

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        return export_rows(store, kind, **filters)


def file_rows(path: str) -> pd.DataFrame:
    from ..exports import load_export

    if not Path(path).exists():
        raise TrainError(f"{path}: no such file or folder", "dataset")
    return load_export(path).to_pandas()


def need_columns(frame: pd.DataFrame, columns: tuple[str, ...], source: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrainError(f"{source}: missing column(s) {', '.join(missing)}; has {', '.join(frame.columns)}", "dataset")
    if frame.empty:
        raise TrainError(f"{source}: no rows", "dataset")
    return frame


def prompt_rows(dataset: str, ws: Workspace) -> pd.DataFrame:
    """Conversational prompts `{"prompt": [user]}` for the algorithms that sample their own answers: the
    store's SL-CAI prompts, or any prompt file."""
    if dataset == "store":
        rows = store_rows(ws, "sft")
        if rows.empty:
            raise TrainError("no prompts in the store: generate SL-CAI traces first, or name a prompt file", "dataset")
        texts = list(dict.fromkeys(m[0]["content"] for m in rows.messages))
        return pd.DataFrame({"prompt": [[{"role": "user", "content": t}] for t in texts]})
    if dataset.endswith((".jsonl", ".csv", ".txt")):
        from ..prompts import load_prompts

        prompts = load_prompts(dataset).prompts
        return pd.DataFrame({"prompt": [[{"role": "user", "content": p.prompt}] for p in prompts]})
    frame = file_rows(dataset)
    if "prompt" not in frame.columns:
        raise TrainError(f"{dataset}: no prompt column", "dataset")
    return frame[["prompt"]]
