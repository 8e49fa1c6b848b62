"""Training: SL-CAI SFT, reward model, PPO (RL-CAI), DPO, GRPO and RLOO over one run harness.

Each algorithm is a module with a config dataclass (its `kind` names it, its `summary` says what it is)
and `train(ctx)`. The harness around them, by concern: `config` (the shared fields, loading, `TrainError`),
`data` (the store's exports and files), `models` (model specs, rewards, checkpoints), `context` (what
`train(ctx)` gets: metrics, progress, cancel), `launch` (prepare, run, supervise several processes),
`trainer` (the TRL Trainer adapter) and `form` (the Train page's choices). Adding an algorithm is one file
and one line in `algorithms.ALGORITHMS`. Importing this package is cheap: torch and TRL load only when a
run starts.
"""

from __future__ import annotations

from .algorithms import ALGORITHMS, KINDS, algorithm, config_class
from .config import TrainConfig, TrainError, load_config_file
from .context import RunContext
from .launch import launch_command, launch_train_job, prepare_train_job, run_train_job, train

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
