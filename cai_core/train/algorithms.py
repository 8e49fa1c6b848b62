"""The algorithms by kind: which module trains each, imported only when a run of that kind starts."""

from __future__ import annotations

import importlib

from .config import TrainConfig, TrainError

# kind → the module that trains it (the CLI, the Train page and the registry list kinds in this order)
ALGORITHMS = {"sft": "sft", "rm": "reward", "ppo": "ppo", "dpo": "dpo", "grpo": "grpo", "rloo": "grpo"}
KINDS: tuple[str, ...] = tuple(ALGORITHMS)


def algorithm(kind: str):
    if kind not in ALGORITHMS:
        raise TrainError(f"unknown training kind {kind!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(f".{ALGORITHMS[kind]}", __package__)


def config_class(kind: str) -> type[TrainConfig]:
    module = algorithm(kind)
    return next(c for c in module.CONFIGS if c.kind == kind)
