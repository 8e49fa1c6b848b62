"""How much each principle's AI labels count in training, decided by the principle's audit against people.

A judge that reads one principle well and another at chance, or backwards, hands the reward model and DPO noise (or
the opposite of the signal) under the second with the same weight as the first. The gate reads each principle's
agreement with people on the label run's pairs (`agreement.dashboard(...).principle_audit`, with its Wilson 95%
interval) and decides, by `GateRule`:

- **unjudged**: fewer than `min_human_labels` human labels to judge it by: kept or dropped as the rule says, and
  marked so either way, never kept silently;
- **drop**: agreement not shown above chance (the interval reaches 0.5), or below it (people read it the other way);
- **keep**: the interval's low end at or above `keep_agreement`;
- **down-weight** otherwise, by weight 2a - 1 for agreement a: how much a label moves with people's choice (1 when
  it always agrees, 0 at chance).

A pair's P(A) for training is then the weighted mean of its principles' P(A) (`Store.pair_preferences`), so a
dropped principle has no say, and a pair labelled only under dropped principles leaves the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from .config import CheckedConfig, ConfigError, load_config_file
from .store import Store
from .workspace import Workspace, write_file_atomically

RULE_FILE = "label_gate.yaml"  # in the data folder: the one rule every export, reward model and DPO run reads

DECISIONS = ("keep", "down-weight", "drop", "unjudged")


@dataclass
class GateRule(CheckedConfig):
    min_human_labels: int = field(
        default=20,
        metadata={"help": "Human labels (ties aside) a principle needs before its agreement is judged.", "min": 1},
    )
    keep_agreement: float = field(
        default=0.7,
        metadata={
            "help": "Keep a principle's labels at full weight when its agreement with people is at least this, by "
            "the low end of its Wilson interval; between chance and this they are down-weighted.",
            "min": 0.5,
        },
    )
    unjudged: Literal["keep", "drop"] = field(
        default="keep",
        metadata={"help": "What to do with a principle that has too few human labels to judge (marked either way)."},
    )

    def check(self) -> None:
        super().check()
        if self.keep_agreement > 1:
            raise ConfigError(f"is {self.keep_agreement}: it must be at most 1", "keep_agreement")
        if self.unjudged not in ("keep", "drop"):
            raise ConfigError(f"is {self.unjudged!r}: choose keep or drop", "unjudged")


def load_rule(ws: Workspace) -> GateRule:
    """The data folder's rule (`label_gate.yaml`), or the defaults where it has none."""
    path = ws.root / RULE_FILE
    return load_config_file(GateRule, path, "label gate rule") if path.exists() else GateRule()


def save_rule(ws: Workspace, rule: GateRule) -> Path:
    """Make `rule` the data folder's (operators only: it changes what every later training run reads)."""
    import dataclasses

    import yaml

    from .auth import require_operator

    require_operator("change the label gate")
    text = yaml.safe_dump(dataclasses.asdict(rule), sort_keys=False).encode()
    return write_file_atomically(ws.root / RULE_FILE, lambda f: f.write(text))


@dataclass(frozen=True)
class Gate:
    run_id: str
    rule: GateRule
    table: pd.DataFrame  # per principle: decision, weight, reason, and the figures they rest on

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.table.principle_id, self.table.weight, strict=True))

    def summary(self) -> str:
        """One line for a run's record and a page: how many principles each decision took."""
        counts = self.table.decision.value_counts()
        return ", ".join(f"{counts[d]} {d}" for d in DECISIONS if counts.get(d)) or "no principles"


GATE_SPLIT = "label_gate"  # kept with a training run's data splits: the decisions its labels were gated by


def recorded_decisions(run_folder: Path) -> pd.DataFrame:
    """The gate's decisions a training run's data was read through; empty where it read no gated AI labels."""
    path = run_folder / f"data-{GATE_SPLIT}.jsonl"
    return pd.read_json(path, lines=True) if path.exists() else pd.DataFrame()


def gate(store: Store, run_id: str, rule: GateRule | None = None) -> Gate:
    """The gate for label run `run_id`: each of its principles' decision under `rule` (the defaults if None)."""
    from .agreement import dashboard

    rule = rule or GateRule()
    audit = dashboard(store, run_id=run_id).principle_audit
    rows = [_decide(row, rule) for row in audit.itertuples(index=False)]
    columns = ["principle_id", "decision", "weight", "reason", "human_labels", "agreement", "low", "high"]
    return Gate(run_id, rule, pd.DataFrame(rows, columns=columns))


def _decide(row, rule: GateRule) -> tuple:
    n, a, low, high = row.human_labels, row.agreement, row.agreement_low, row.agreement_high
    figures = (n, a, low, high)
    if n < rule.min_human_labels or pd.isna(a):
        weight = 1.0 if rule.unjudged == "keep" else 0.0
        reason = f"{n} human label(s), fewer than {rule.min_human_labels}: {rule.unjudged} as the rule says"
        return (row.principle_id, "unjudged", weight, reason, *figures)
    shown = f"agreement {a:.2f} [{low:.2f}, {high:.2f}] over {n} human labels"
    if high < 0.5:
        return (row.principle_id, "drop", 0.0, f"{shown}: people read it the other way", *figures)
    if low <= 0.5:
        return (row.principle_id, "drop", 0.0, f"{shown}: not shown above chance", *figures)
    if low >= rule.keep_agreement:
        return (row.principle_id, "keep", 1.0, f"{shown}: at least {rule.keep_agreement}", *figures)
    weight = round(2 * a - 1, 3)
    return (row.principle_id, "down-weight", weight, f"{shown}: weight 2a - 1 = {weight}", *figures)
