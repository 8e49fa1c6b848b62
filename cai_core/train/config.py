"""A training run's config: the fields every algorithm shares and LoRA's, read from a YAML file or the CLI's
flags; and `TrainError`, the one-line refusal every door shows."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import yaml

if TYPE_CHECKING:
    import pandas as pd

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


def device_count() -> tuple[int, str]:
    """How many processes this machine can give one device each: GPUs, else CPU cores."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return os.cpu_count() or 1, "CPU cores"


def use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.dtype == "bfloat16":
        return True
    return config.dtype == "auto" and torch.cuda.is_available()


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
