"""Training: SL-CAI SFT, reward model, PPO (RL-CAI), DPO, GRPO and RLOO over one run harness.

Each algorithm is a module with a config dataclass (its `kind` names it, its `summary` says what it is),
`train(ctx)`, and its job kind (`launch.training_kind`), registered in `cai_core.jobs.KINDS` by one line: the
registry prepares, launches and runs a training run as it does any job. The harness around them, by concern:
`config` (the shared fields, loading, `TrainError`), `data` (the store's exports and files), `models` (model
specs, rewards, checkpoints), `context` (what `train(ctx)` gets: metrics, progress, cancel), `launch` (the data
snapshot, the run, several processes), `trainer` (the TRL Trainer adapter) and `form` (the Train page's
choices). Importing this package is cheap: torch and TRL load only when a run starts.
"""

from __future__ import annotations

from .config import TrainConfig, TrainError, load_config_file
from .context import RunContext
from .launch import KINDS, config_class, run_train_job, train

__all__ = [
    "KINDS",
    "RunContext",
    "TrainConfig",
    "TrainError",
    "config_class",
    "load_config_file",
    "run_train_job",
    "train",
]
