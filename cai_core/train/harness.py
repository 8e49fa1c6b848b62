"""The run harness every training algorithm shares.

A training run is a job folder (see `cai_core.jobs`), so progress, cancel, the log, detached launch and
the store's `runs` table work as they do for generation:

    runs/<run_id>/run.json            kind (train-sft, ...), base model, config
    runs/<run_id>/config.yaml         the config, as `cai train KIND --config` reads it back
    runs/<run_id>/data-<split>.jsonl  the training data, snapshotted when the run was prepared
    runs/<run_id>/train_metrics.jsonl every logged number (loss, reward, kl, ...), ingested by the store
    runs/<run_id>/checkpoints/        checkpoint-<step> folders; a rerun resumes from the last one
    runs/<run_id>/final/              the trained model: a local folder, so a model spec on every page

The data is snapshotted by whoever prepares the run (the CLI or the app, which may open the database),
because the training process never opens the database. The run id hashes the config and the data, so
the same command after a kill or a cancel resumes the same run, and new data makes a new run.
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
    """A run cannot start or go on for a reason the user can fix (config, data, model); one line."""


@dataclass
class TrainConfig:
    """What every algorithm shares. Defaults run on a CPU in minutes with the default model."""

    kind: ClassVar[str] = ""

    model: str = field(
        default="default", metadata={"help": "Model to train: default, a local folder, or a finished run's id."}
    )
    dataset: str = field(
        default="store",
        metadata={"help": "store (exported from the database when prepared), or a jsonl/parquet/datasets path."},
    )
    max_steps: int = field(default=50, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=4, metadata={"help": "Examples (PPO: rollouts) per step and device."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    max_length: int = field(default=512, metadata={"help": "Longest tokenised example; longer ones are cut."})
    save_steps: int = field(default=25, metadata={"help": "Write a checkpoint every N steps (and on cancel)."})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, initialisation and sampling."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "auto: bf16 mixed precision on a GPU, fp32 on a CPU."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory (worth it for large models on a GPU)."}
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={"help": "An `accelerate config` YAML: start through `accelerate launch` (DDP/FSDP/DeepSpeed)."},
    )
    run_id: str | None = field(
        default=None, metadata={"help": "Run name; by default a hash of config and data, so rerunning resumes."}
    )

    def check(self) -> None:
        """Raise TrainError for values no run could use."""
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} is {getattr(self, name)}: it must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise TrainError(f"learning_rate is {self.learning_rate}: it must be a positive number")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise TrainError(f"accelerate config {self.accelerate_config}: no such file")

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        """The run's data by split ("train", maybe "eval"); called when the run is prepared."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
                raise TrainError(f"{name}: {value!r} is not a number") from None
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


# --- models and rewards ----------------------------------------------------------------------------


def resolve_model(spec: str, ws: Workspace) -> str:
    """A model spec as a folder transformers can load: default, a finished run's id, or a path."""
    if spec == "default":
        from ..backends import ensure_default_model

        return str(ensure_default_model(ws.models_dir))
    final = ws.runs_dir / spec / "final"
    if (final / "config.json").exists():
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


def resolve_reward(spec: str, ws: Workspace) -> str | RewardFn:
    """`module:function` is a Python reward `(prompts, completions, **kw) -> list[float]`, as TRL's
    `reward_funcs` take; anything else is a sequence-classification model spec."""
    if not spec:
        raise TrainError("this algorithm needs a reward: --reward-model RUN_ID|FOLDER|module:function")
    if _CALLABLE_SPEC.match(spec) and not Path(spec).exists():
        module, name = spec.split(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise TrainError(f"reward {spec}: {exc}") from None
        if not callable(fn):
            raise TrainError(f"reward {spec}: not callable")
        return fn
    return resolve_model(spec, ws)


def use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.dtype == "bfloat16":
        return True
    return config.dtype == "auto" and torch.cuda.is_available()


# --- preparing, running, launching -----------------------------------------------------------------


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def prepare_train_job(config: TrainConfig, ws: Workspace | None = None) -> JobFolder:
    """Snapshot the data and create (or find) the run's folder. A config or data problem still makes
    the folder, marked failed with the reason (what the registry shows), then raises TrainError."""
    ws = ws or Workspace.from_env()
    problem: Exception | None = None
    payloads: dict[str, str] = {}
    try:
        config.check()
        for split, frame in config.build_data(ws).items():
            payloads[split] = frame.to_json(orient="records", lines=True, force_ascii=False)
    except (TrainError, OSError, KeyError, ValueError) as exc:
        problem = exc
    digest = hashlib.sha256("".join(f"{k}\0{v}" for k, v in sorted(payloads.items())).encode()).hexdigest()
    identity = {**config.to_dict(), "kind": config.kind, "data": digest if problem is None else "unusable"}
    identity["run_id"] = None
    run_id = config.run_id or run_id_for(config.kind, identity)
    job = JobFolder.create(
        ws.runs_dir,
        run_id,
        {"kind": f"train-{config.kind}", "model": config.model, "config": {**config.to_dict(), "run_id": run_id}},
    )
    (job.path / "config.yaml").write_text(
        yaml.safe_dump({**config.to_dict(), "run_id": run_id}, sort_keys=False), encoding="utf-8"
    )
    if problem is not None:
        message = problem.args[0] if isinstance(problem, KeyError) and problem.args else str(problem)
        job.set_progress("failed", 0, config.max_steps, message)
        raise TrainError(message) from None
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

    @property
    def checkpoints_dir(self) -> Path:
        return self.job.path / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.job.path / "final"

    @property
    def main(self) -> bool:
        return _is_main_process()

    def dataset(self, split: str = "train"):
        import datasets

        path = self.job.path / f"data-{split}.jsonl"
        if not path.exists():
            return None
        return datasets.Dataset.from_json(str(path))

    def last_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoints_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None

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
        if self.main:
            self.job.set_progress("running", step, self.config.max_steps, message)

    def finish(self, model_path: Path, step: int, message: str = "") -> None:
        if not self.main:
            return
        record = TrainedModel(self.job.run_id, self.job.spec["kind"], str(model_path), self.config.model, step)
        self.job.append("trained_models", [to_row(record)])
        self.job.set_progress("done", step, self.config.max_steps, message or f"model in {model_path}")

    def cancelled(self, step: int) -> None:
        if self.main:
            self.job.set_progress(
                "cancelled", step, self.config.max_steps, f"cancelled at step {step}; run it again to resume"
            )


def run_train_job(
    job: JobFolder,
    ws: Workspace | None = None,
    *,
    callbacks: list | None = None,
    reward_fn: RewardFn | None = None,
) -> JobFolder:
    """Run (or resume) a prepared run to its end, a cancel or a failure; returns its folder."""
    from . import algorithm

    ws = ws or Workspace.from_env()
    config = job_config(job)
    progress = job.progress()
    if progress.status == "done" and (job.path / "final" / "config.json").exists():
        return job
    if job.cancel_requested() and progress.status == "pending":
        job.set_progress("cancelled", 0, config.max_steps, "cancelled before it started; run it again to start it")
        job.clear_cancel()
        return job
    if _is_main_process():
        job.clear_cancel()  # an old, already honoured request: running again means resuming
        job.repair()
    ctx = RunContext(job, config, ws, list(callbacks or []), reward_fn)
    ctx.progress(progress.done, "starting")
    try:
        algorithm(config.kind).train(ctx)
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if ctx.main:
            job.set_progress(status, job.progress().done, config.max_steps, f"{type(exc).__name__}: {reason}")
        raise
    return job


def train(config: TrainConfig, ws: Workspace | None = None, **kwargs) -> JobFolder:
    """Prepare and run in this process (tests, notebooks); `launch_train_job` runs it detached."""
    ws = ws or Workspace.from_env()
    return run_train_job(prepare_train_job(config, ws), ws, **kwargs)


def launch_command(job: JobFolder, ws: Workspace) -> list[str]:
    """`cai train resume RUN_ID`, through `accelerate launch` when the config names an accelerate config."""
    cli = ["-m", "cai_core.cli", *ws.cli_args(), "train", "resume", job.run_id]
    accelerate_config = job.spec["config"].get("accelerate_config")
    if accelerate_config:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config, *cli]
    return [sys.executable, *cli]


def launch_train_job(job: JobFolder, ws: Workspace) -> subprocess.Popen:
    """Start the run detached: closing the page or the terminal does not stop it."""
    return job.start(launch_command(job, ws))


# --- the TRL / transformers Trainer path ----------------------------------------------------------


def trainer_arguments(ctx: RunContext) -> dict:
    """The TrainingArguments every TRL trainer here shares."""
    c = ctx.config
    return {
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
            if ctx.job.cancel_requested():
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
    if ctx.job.cancel_requested() and step < ctx.config.max_steps:
        ctx.cancelled(step)
        return
    message = evaluate() if evaluate else ""
    save_final(ctx, trainer.accelerator.unwrap_model(trainer.model), tokenizer)
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


def lora_config(enabled: bool, r: int, alpha: int, task_type: str):
    if not enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules="all-linear", task_type=task_type)


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
        raise TrainError(f"dataset {path}: no such file or folder")
    return load_export(path).to_pandas()


def need_columns(frame: pd.DataFrame, columns: tuple[str, ...], source: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrainError(f"dataset {source}: missing column(s) {', '.join(missing)}; has {', '.join(frame.columns)}")
    if frame.empty:
        raise TrainError(f"dataset {source}: no rows")
    return frame
