"""What the Train page's form offers: a field's label, the rewards it may pick, the model the next stage
starts from. The browser never names code or a path outside the workspace, so its choices come from here."""

from __future__ import annotations

import dataclasses
import os

import pandas as pd

from ..jobs import training_kind_name
from .models import CALLABLE_SPEC


def form_label(f: dataclasses.Field) -> str:
    """A config field's name as words, for a form."""
    return f.metadata.get("label") or f.name.replace("_", " ").capitalize()


REWARD_FUNCTIONS_ENV = "CAI_REWARD_FUNCTIONS"


def registered_reward_functions() -> list[str]:
    """The reward callables (`module:function`) the operator lets the Train page offer, from the environment
    variable CAI_REWARD_FUNCTIONS (comma-separated). The browser never names a callable itself: importing a
    module runs its code. The CLI and config files may name any."""
    specs = [s.strip() for s in os.environ.get(REWARD_FUNCTIONS_ENV, "").split(",") if s.strip()]
    return [s for s in specs if CALLABLE_SPEC.match(s)]


def reward_choices(runs: pd.DataFrame) -> dict[str, str]:
    """What the Train page offers as a reward, spec → label: every finished reward model in the registry
    (`Store.train_runs()`), newest first, then the operator's registered callables."""
    finished = runs[(runs.kind == training_kind_name("rm")) & runs.model_path.notna()] if not runs.empty else runs
    choices = {r.run_id: f"reward model {r.run_id} · step {r.final_step}" for r in finished.itertuples()}
    choices.update({spec: f"{spec} (registered function)" for spec in registered_reward_functions()})
    return choices


def latest_finished(runs: pd.DataFrame, kind: str) -> str | None:
    """The newest finished run of a kind (`sft`, ...), by run id: a model spec for the next stage."""
    if runs.empty:
        return None
    finished = runs[(runs.kind == training_kind_name(kind)) & runs.model_path.notna()]
    return None if finished.empty else str(finished.run_id.iloc[0])
