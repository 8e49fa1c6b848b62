"""Direct RLAIF: TRL's DPOTrainer straight on the AI preference labels (or the SL-CAI revision pairs).

With `soft_labels`, the judge's P(chosen better) (calibrated where its label run was, see `PreferenceData`) reaches
the loss instead of a hard "chosen": with Δ = β((log π/π_ref)(chosen) - (log π/π_ref)(rejected)),
- `target`: cross-entropy against P, -(P log σ(Δ) + (1 - P) log σ(-Δ)) (the CAI paper's soft target, as the reward
  model's `soft` loss; at P = 1 it is DPO's own loss, and a pair at P = 0.52 barely pulls);
- `weight`: DPO's loss weighted by the label's confidence |2P - 1|, -(2P - 1) log σ(Δ).
The label gate acts first, on what P is: it drops principles from a pair's P (a pair labelled only under dropped
principles leaves the data) and down-weights a principle's say in the mean of a pair's principles
(`Store.pair_preferences`); the soft loss then decides how hard the gated P pulls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from ..label_gate import GATE_SPLIT, load_rule
from ..workspace import Workspace
from .config import LoraOptions, TrainConfig, TrainError
from .context import RunContext
from .data import file_rows, need_columns, store_rows
from .launch import training_kind
from .models import load_tokenizer, resolve_model
from .trainer import run_trainer, trainer_arguments

PROBABILITY_SPLIT = "label_probability"  # kept with a training run's data splits: the P its pairs read
SOFT_LABEL = "soft_label"  # P(chosen better), as the preference export writes it
SOFT_LABEL_MODES = ("off", "target", "weight")


def recorded_probability(run_folder: Path) -> pd.DataFrame:
    """Which P(a better) a training run's pairs read (raw, or calibrated by which calibration); empty where its
    data said nothing of it."""
    path = run_folder / f"data-{PROBABILITY_SPLIT}.jsonl"
    return pd.read_json(path, lines=True) if path.exists() else pd.DataFrame()


def describe_probability(record: pd.DataFrame) -> str:
    """`recorded_probability` in words: per label source, the P its pairs read and how many."""
    return "; ".join(
        f"{r.labels}: {'raw' if pd.isna(r.calibration) else f'calibrated by {r.calibration}'} P ({r.pairs} pairs)"
        for r in record.itertuples()
    )


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
    raw_labels: bool = field(
        default=False,
        metadata={
            "help": "Store AI labels only: the judge's raw P(a better), even where its label run stored a calibrated "
            "one (by default the calibrated one is read; the run records which it read).",
            "label": "Raw (uncalibrated) labels",
        },
    )
    gate: bool = field(
        default=True,
        metadata={
            "help": "Store AI labels only: weigh each principle's labels by its agreement with people, by the data "
            "folder's label gate rule (`cai gate`); the run keeps the decisions beside its data.",
            "label": "Gate the labels by reliability",
        },
    )

    def preference_data(self, ws: Workspace, dataset: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """The pairs, and what is kept beside them in the run's data: which P(a better) they read
        (`data-label_probability.jsonl`) and, where AI labels were gated, each principle's decision
        (`data-label_gate.jsonl`). The gate is decided once, and the pairs are read through that decision."""
        if dataset != "store":
            rows = need_columns(file_rows(dataset), ("prompt", "chosen", "rejected"), dataset)
            return rows, self.probability_record(rows)
        if self.labels == "sl-cai":
            return self.refuse_empty(store_rows(ws, "pairs")), {}
        from ..exports import ExportFilter, export_rows
        from ..label_gate import gate
        from ..store import Store

        with Store.open(ws) as store:
            store.ingest(ws.runs_dir)
            run_id = self.labels or store.latest_label_run()
            gated = self.gate and run_id not in (None, "human")
            decided = gate(store, run_id, load_rule(ws)) if gated else None
            rows = export_rows(
                store,
                "preferences",
                ExportFilter(
                    run_id=run_id, min_confidence=self.min_confidence, gate=decided, raw_labels=self.raw_labels
                ),
            )
        rows = self.refuse_empty(rows)
        decisions = {GATE_SPLIT: decided.table} if decided is not None and not decided.table.empty else {}
        return rows, self.probability_record(rows) | decisions

    @staticmethod
    def refuse_empty(rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            raise TrainError(
                "no labelled pairs in the store: make pairs and label them first, or use the SL-CAI revision "
                "pairs (sl-cai)",
                "labels",
            )
        return rows

    def probability_record(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Which P(a better) the pairs read: per label source, raw or calibrated and by which calibration, with
        its number of pairs. Empty for data that says nothing of it (revision pairs, files without the columns)."""
        if not {"labels", "probability", "calibration"} <= set(rows.columns):
            return {}
        grouped = rows.groupby(["labels", "probability", "calibration"], dropna=False, sort=False)
        return {PROBABILITY_SPLIT: grouped.size().reset_index(name="pairs")}


@dataclass
class DPOConfig(LoraOptions, PreferenceData, TrainConfig):
    kind = "dpo"
    summary = "Direct RLAIF: DPO on the AI preference labels (TRL DPOTrainer)."
    starts_from_sft = True

    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate."})
    beta: float = field(
        default=0.1, metadata={"help": "DPO β: how far the policy may move from the reference.", "label": "β"}
    )
    soft_labels: Literal["off", "target", "weight"] = field(
        default="off",
        metadata={
            "help": "off: DPO's hard loss (chosen is better); target: cross-entropy against the label's "
            "P(chosen better); weight: the hard loss weighted by the label's confidence |2P - 1|. The P is the "
            "calibrated one where the label run stored one, after the label gate. Needs soft labels.",
            "label": "Soft labels",
        },
    )

    def check(self) -> None:
        super().check()
        if self.soft_labels not in SOFT_LABEL_MODES:
            raise TrainError(f"is {self.soft_labels!r}: choose one of {', '.join(SOFT_LABEL_MODES)}", "soft_labels")

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        rows, records = self.preference_data(ws, self.dataset)
        rows = rows.reset_index(drop=True)
        columns = ["prompt", "chosen", "rejected"]
        if self.soft_labels != "off":
            if SOFT_LABEL not in rows.columns or rows[SOFT_LABEL].isna().any():
                raise TrainError(
                    f"soft labels {self.soft_labels!r} need a soft_label column (P(chosen better)) on every pair: "
                    "use AI labels (not sl-cai), or soft labels off",
                    "soft_labels",
                )
            columns.append(SOFT_LABEL)
        return {"train": rows[columns], **records}


def train(ctx: RunContext) -> None:
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    c: DPOConfig = ctx.config
    path = resolve_model(c.model, ctx.ws)
    tokenizer = load_tokenizer(path)
    trainer = (DPOTrainer if c.soft_labels == "off" else soft_label_trainer(c.soft_labels))(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=TRLDPOConfig(**trainer_arguments(ctx), beta=c.beta, max_length=c.max_length),
        train_dataset=ctx.dataset("train"),
        processing_class=tokenizer,
        peft_config=c.peft_config("CAUSAL_LM"),
    )
    run_trainer(ctx, trainer, tokenizer)


NOT_MODEL_INPUTS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")


def soft_label_trainer(mode: str):
    """TRL's DPOTrainer with a per-pair soft target (`mode` "target") or confidence weight ("weight"): the
    `soft_label` column rides through TRL's collator beside its inputs.

    Hand-written because TRL's DPO takes one global `label_smoothing` for every pair, never a per-pair target or
    weight, and computes its loss inside one method with no hook for it: the policy's log-probabilities are read
    through TRL's own forward (its fused LM head, as its loss reads them), the reference's through its
    `compute_ref_log_probs`, and only the loss on them is ours. TRL's data preparation, reference model, LoRA
    handling and logging are kept."""
    import torch
    import torch.nn.functional as F
    from trl import DPOTrainer

    class SoftLabelDPOTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            collate = self.data_collator  # TRL's, set up with the tokenizer's pad token

            def with_soft_labels(examples):
                batch = collate(examples)
                batch[SOFT_LABEL] = torch.tensor([e[SOFT_LABEL] for e in examples], dtype=torch.float)
                return batch

            self.data_collator = with_soft_labels

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, SOFT_LABEL]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p = inputs.pop(SOFT_LABEL)
            margin = self.beta * preference_margin(self, model, inputs)
            if mode == "target":
                losses = -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin))
            else:
                losses = -(2 * p - 1) * F.logsigmoid(margin)
            metrics = self._metrics["train" if self.model.training else "eval"]
            gathered = self.accelerator.gather(margin.detach())
            metrics["rewards/margins"].append(gathered.mean().item())
            metrics["rewards/accuracies"].append((gathered > 0).float().mean().item())
            loss = losses.mean()
            return (loss, None) if return_outputs else loss

    return SoftLabelDPOTrainer


def preference_margin(trainer, model, inputs):
    """Per pair, (log π - log π_ref)(chosen) - (log π - log π_ref)(rejected) over the completions' tokens, on a
    batch of TRL's preference collator (chosen rows first, then rejected)."""
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
    outputs = model(**model_inputs, use_cache=False, labels=labels, fused_lm_head=True)
    logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)
    chosen, rejected = logps.chunk(2, dim=0)
    if "ref_chosen_logps" in inputs:
        ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        reference = model if trainer.ref_model is None else trainer.ref_model  # LoRA: the model, adapter off
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(reference, inputs)
    return (chosen - ref_chosen) - (rejected - ref_rejected)


DPO = training_kind(DPOConfig, train)
