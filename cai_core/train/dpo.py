"""Direct RLAIF: TRL's DPOTrainer straight on the AI preference labels (or the SL-CAI revision pairs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..label_gate import GATE_SPLIT, load_rule
from ..workspace import Workspace
from .config import LoraOptions, TrainConfig, TrainError
from .context import RunContext
from .data import file_rows, need_columns, store_rows
from .models import load_tokenizer, resolve_model
from .trainer import run_trainer, trainer_arguments


@dataclass
class PreferenceData:
    """Where chosen/rejected pairs come from; shared by DPO and the reward model."""

    labels: str | None = field(
        default=None,
        metadata={
            "help": "Store data only: an AI label run id, `human`, or `sl-cai` (revision versus first answer); "
            "the latest label run when unset.",
            "label": "Preference labels",
            "text": True,
        },
    )
    min_confidence: float = field(
        default=0.0, metadata={"help": "Store data only: keep pairs with |2P-1| >= this.", "label": "Min confidence"}
    )
    gate: bool = field(
        default=True,
        metadata={
            "help": "Store AI labels only: weigh each principle's labels by its agreement with people, by the data "
            "folder's label gate rule (`cai gate`); the run keeps the decisions beside its data.",
            "label": "Gate the labels by reliability",
        },
    )

    def preference_rows(self, ws: Workspace, dataset: str) -> pd.DataFrame:
        if dataset != "store":
            frame = file_rows(dataset)
            return need_columns(frame, ("prompt", "chosen", "rejected"), dataset)
        if self.labels == "sl-cai":
            rows = store_rows(ws, "pairs")
        else:
            rule = load_rule(ws) if self.gate else None
            rows = store_rows(ws, "preferences", run_id=self.labels, min_confidence=self.min_confidence, gate=rule)
        if rows.empty:
            raise TrainError(
                "no labelled pairs in the store: make pairs and label them first, or use the SL-CAI revision "
                "pairs (sl-cai)",
                "labels",
            )
        return rows

    def gate_record(self, ws: Workspace, dataset: str) -> dict[str, pd.DataFrame]:
        """The gate's decision per principle, kept with the run's data (`data-label_gate.jsonl`), where the labels
        were gated: which principles were kept, down-weighted, dropped or unjudged, and why."""
        if dataset != "store" or not self.gate or self.labels in ("sl-cai", "human"):
            return {}
        from ..label_gate import gate
        from ..store import Store

        with Store.open(ws) as store:
            run_id = self.labels or store.latest_label_run()
            decided = gate(store, run_id, load_rule(ws)) if run_id else None
        return {GATE_SPLIT: decided.table} if decided is not None and not decided.table.empty else {}


@dataclass
class DPOConfig(LoraOptions, PreferenceData, TrainConfig):
    kind = "dpo"
    summary = "Direct RLAIF: DPO on the AI preference labels (TRL DPOTrainer)."
    starts_from_sft = True

    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate."})
    beta: float = field(
        default=0.1, metadata={"help": "DPO β: how far the policy may move from the reference.", "label": "β"}
    )

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        rows = self.preference_rows(ws, self.dataset)
        return {
            "train": rows[["prompt", "chosen", "rejected"]].reset_index(drop=True),
            **self.gate_record(ws, self.dataset),
        }


def train(ctx: RunContext) -> None:
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    c: DPOConfig = ctx.config
    path = resolve_model(c.model, ctx.ws)
    tokenizer = load_tokenizer(path)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=TRLDPOConfig(**trainer_arguments(ctx), beta=c.beta, max_length=c.max_length),
        train_dataset=ctx.dataset("train"),
        processing_class=tokenizer,
        peft_config=c.peft_config("CAUSAL_LM"),
    )
    run_trainer(ctx, trainer, tokenizer)


CONFIGS = (DPOConfig,)
