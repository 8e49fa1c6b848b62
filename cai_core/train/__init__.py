"""Training: SL-CAI SFT, reward model, PPO (RL-CAI), DPO, GRPO and RLOO over one run harness.

Each algorithm is a module with a config dataclass (its `kind` names it, its `summary` says what it is)
and `train(ctx)`; `harness` gives them the job folder, data snapshot, metrics, checkpoints, cancel, resume
and several processes. Adding an algorithm is one file and one line in `ALGORITHMS`. Importing this
package is cheap: torch and TRL load only when a run starts.
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

# kind → the module that trains it (the CLI, the Train page and the registry list kinds in this order)
ALGORITHMS = {"sft": "sft", "rm": "reward", "ppo": "ppo", "dpo": "dpo", "grpo": "grpo", "rloo": "grpo"}
KINDS: tuple[str, ...] = tuple(ALGORITHMS)


def algorithm(kind: str):
    if kind not in ALGORITHMS:
        raise TrainError(f"unknown training kind {kind!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(f".{ALGORITHMS[kind]}", __name__)


def config_class(kind: str) -> type[TrainConfig]:
    module = algorithm(kind)
    return next(c for c in module.CONFIGS if c.kind == kind)


__all__ = [
    "ALGORITHMS",
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
