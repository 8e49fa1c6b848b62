"""A training run's config: the fields every algorithm shares and LoRA's, read from a YAML file or the CLI's
flags; and `TrainError`, the one-line refusal every door shows."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from ..config import CheckedConfig, ConfigError, config_from_mapping
from ..config import load_config_file as load_config
from ..tracking import TrackerChoice, tracker_field

if TYPE_CHECKING:
    import pandas as pd

    from ..workspace import Workspace


class TrainError(ConfigError):
    """A run cannot start or go on for a reason the user can fix (config, data, model); one line, naming the config
    field at fault when one is."""


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
class TrainConfig(CheckedConfig):
    """What every algorithm shares. Defaults run on a CPU in minutes with the default model.

    A field's metadata holds its `help` (the CLI's and the form's) and, where the field's name does not read
    as words, a `label` for the form."""

    kind: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: what the CLI's `cai train --help` and the Train page say
    # improves a policy: by default it starts from the latest SFT model, as SL-CAI then RL-CAI does
    starts_from_sft: ClassVar[bool] = False
    # learns from a reward model's scores (a recipe trains one before it), not from the labelled pairs themselves
    needs_reward_model: ClassVar[bool] = False
    # its loop averages gradients itself (no DDP wrapper), so it cannot run sharded (FSDP, DeepSpeed)
    data_parallel_only: ClassVar[bool] = False

    model: str = field(
        default="default",
        metadata={
            "help": "Model to train: default, a local folder, a hub id, or a finished run's id. Training always runs "
            "on transformers, so it takes no hf: or vllm: engine prefix.",
            "model": True,
        },
    )
    dataset: str = field(
        default="store",
        metadata={
            "help": "store (exported from the database when prepared), or a jsonl/parquet/datasets path.",
            "path": True,
        },
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
            "path": True,
        },
    )
    run_id: str | None = field(
        default=None,
        metadata={
            "help": "Run name; by default a hash of config and data, so rerunning resumes.",
            "label": "Run id",
            "text": True,
        },
    )
    tracker: TrackerChoice = tracker_field()

    def check(self) -> None:
        """Raise TrainError for values no run could use."""
        super().check()
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps", "nproc"):
            if getattr(self, name) < 1:
                raise TrainError(f"is {getattr(self, name)}: it must be at least 1", name)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise TrainError(f"is {self.learning_rate}: it must be a positive number", "learning_rate")
        if self.accelerate_config:
            self.check_accelerate_config(Path(self.accelerate_config))
        if self.nproc > 1 and not self.accelerate_config:
            devices, what = device_count()
            if self.nproc > devices:
                raise TrainError(f"is {self.nproc}, but this machine has {devices} {what}", "nproc")
        if self.run_id is not None:
            check_run_id(self.run_id)

    def check_accelerate_config(self, path: Path) -> None:
        if not path.is_file():
            raise TrainError(f"{path}: no such file", "accelerate_config")
        if self.data_parallel_only:
            import yaml

            launch = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if launch.get("distributed_type") in ("FSDP", "DEEPSPEED"):
                raise TrainError(
                    f"{path} asks for {launch['distributed_type']}: {self.kind} here is data parallel only "
                    "(use a MULTI_GPU config, and LoRA for large models)",
                    "accelerate_config",
                )

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
            "text": True,
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


def reward_model_field():
    """The reward an RL trainer (PPO, GRPO, RLOO) optimises, declared once for all of them."""
    return field(
        default="",
        metadata={
            "help": "Reward: a train-rm run id, a sequence-classifier folder, or module:function (a callable).",
            "label": "Reward model",
            "model": True,
        },
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
    return config_from_mapping(cls, data, f"{cls.kind} config", TrainError)


def load_config_file(cls: type[TrainConfig], path: str | Path, overrides: dict | None = None) -> TrainConfig:
    return load_config(cls, path, f"{cls.kind} config", overrides, TrainError)
