"""Training: SL-CAI SFT, reward model, PPO (RL-CAI), DPO, GRPO and RLOO over one run harness.

Each algorithm is a module with a config dataclass (`kind` names it) and `train(ctx)`; `harness` gives
them the job folder, data snapshot, metrics, checkpoints, cancel and resume. Importing this package
is cheap: torch and TRL load only when a run starts.
"""

from __future__ import annotations

import importlib

from .harness import (
    RunContext,
    TrainConfig,
    TrainError,
    launch_command,
    launch_train_job,
    load_config_file,
    prepare_train_job,
    run_train_job,
    train,
)

KINDS: tuple[str, ...] = ("sft", "rm", "ppo", "dpo", "grpo", "rloo")
_MODULES = {"sft": "sft", "rm": "reward", "ppo": "ppo", "dpo": "dpo", "grpo": "grpo", "rloo": "grpo"}


def algorithm(kind: str):
    if kind not in _MODULES:
        raise TrainError(f"unknown training kind {kind!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(f".{_MODULES[kind]}", __name__)


def config_class(kind: str) -> type[TrainConfig]:
    module = algorithm(kind)
    return next(c for c in module.CONFIGS if c.kind == kind)


__all__ = [
    "KINDS",
    "RunContext",
    "TrainConfig",
    "TrainError",
    "algorithm",
    "config_class",
    "launch_command",
    "launch_train_job",
    "load_config_file",
    "prepare_train_job",
    "run_train_job",
    "train",
]
