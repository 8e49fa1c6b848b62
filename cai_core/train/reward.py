"""A reward model (a sequence classifier with one output) with TRL's RewardTrainer on AI preferences.

Two losses for the AI's soft labels (P, the judge's probability that the chosen answer is better):
- `margin` (TRL's): `-log σ(r_chosen - r_rejected - margin)` with margin = margin_scale × confidence |2P - 1|:
  a confident label asks for a wide reward gap and a near-tie only for the right order, the graded margin
  of Llama 2's reward models. Data without a confidence (revision pairs, plain files) trains on hard pairs.
- `soft`: cross-entropy against P, `-(P log σ(Δ) + (1 - P) log σ(-Δ))` with Δ = r_chosen - r_rejected: the
  soft preference-model target of the CAI paper (Bai et al. 2022, section 4.1). It needs soft labels.

Accuracy is always out of sample. On people's labels when the store has any: human-labelled pairs are kept
out of training, and when every pair has a human label (hh-rlhf imports), a share of them (`eval_fraction`)
is held out. Else on a held-out split of the training pairs. The run's message and the metric's name
(`accuracy_human` or `accuracy_heldout`) say which; with nothing held out, the message says so. Beside the
accuracy: the calibration error of P(chosen better) = σ(r_chosen - r_rejected) (`ece_*`) and the mean reward
of short, medium and long answers (`reward_short_*`, ...), since a reward that grows with length is the
classic hack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from ..stats import ece
from ..workspace import Workspace
from .config import LoraOptions, TrainConfig, TrainError
from .context import RunContext
from .data import store_rows
from .dpo import PreferenceData
from .launch import training_kind
from .models import load_tokenizer, resolve_model
from .trainer import run_trainer, trainer_arguments

COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass
class RewardConfig(LoraOptions, PreferenceData, TrainConfig):
    kind = "rm"
    summary = "A reward model on the AI preference labels (TRL RewardTrainer)."

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    loss: Literal["margin", "soft"] = field(
        default="margin",
        metadata={"help": "margin: hard pairs with a confidence margin; soft: cross-entropy against the AI's P."},
    )
    margin_scale: float = field(
        default=1.0, metadata={"help": "Margin = this × the label's confidence |2P-1|; 0 trains on hard pairs."}
    )
    eval_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Share of pairs held out to measure accuracy on (human-labelled ones first).",
            "label": "Held-out share",
        },
    )

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise TrainError(f"is {self.eval_fraction}: it must be from 0 to below 1", "eval_fraction")

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        rows, records = self.preference_data(ws, self.dataset)
        rows = rows.reset_index(drop=True)
        if self.loss == "soft":
            if "soft_label" not in rows.columns or rows.soft_label.isna().any():
                raise TrainError(
                    "the soft loss needs soft labels (a soft_label column, P(chosen better)): use AI labels, or "
                    "the margin loss",
                    "loss",
                )
        elif "confidence" in rows.columns and self.margin_scale > 0:
            rows["margin"] = self.margin_scale * rows.confidence.astype(float)
        columns = [c for c in (*COLUMNS, "margin", "soft_label") if c in rows.columns]
        if self.loss != "soft" and "soft_label" in columns:
            columns.remove("soft_label")
        human = pd.DataFrame()
        if self.dataset == "store" and self.labels != "human":
            human = store_rows(ws, "preferences", run_id="human")
        if human.empty or "pair_id" not in rows.columns:
            train, held_out = self.split(rows)
            held = {"eval_heldout": held_out[COLUMNS]} if len(held_out) else {}
            return {"train": train[columns], **held, **records}
        train = rows[~rows.pair_id.isin(set(human.pair_id))]
        if train.empty:
            # every pair also has a person's label (an hh-rlhf import labelled by the judge): hold some out
            train, held_out = self.split(rows)
            human = human[human.pair_id.isin(set(held_out.pair_id))]
        held = {"eval_human": human[COLUMNS]} if len(human) else {}
        return {"train": train[columns], **held, **records}

    def split(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, held out): `eval_fraction` of the rows, seeded, with at least one pair left to train on."""
        held_out = min(round(len(rows) * self.eval_fraction), len(rows) - 1)
        shuffled = rows.sample(frac=1.0, random_state=self.seed).reset_index(drop=True)
        return shuffled.iloc[held_out:], shuffled.iloc[:held_out]


def train(ctx: RunContext) -> None:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    c: RewardConfig = ctx.config
    path = resolve_model(c.model, ctx.ws)
    tokenizer = load_tokenizer(path)
    # a causal checkpoint loads with a fresh one-output score head: the warning about it is expected
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = (soft_label_trainer() if c.loss == "soft" else RewardTrainer)(
        model=model,
        args=TRLRewardConfig(**trainer_arguments(ctx), max_length=c.max_length, center_rewards_coefficient=None),
        train_dataset=ctx.dataset("train"),
        processing_class=tokenizer,
        peft_config=c.peft_config("SEQ_CLS"),
    )

    def evaluate() -> str:
        for split, label in (("eval_human", "human"), ("eval_heldout", "heldout")):
            data = ctx.dataset(split)
            if data is None:
                continue
            chosen, rejected = pair_rewards(trainer.model, tokenizer, data, c.max_length)
            result = evaluation(chosen, rejected, answer_lengths(tokenizer, data))
            ctx.log_metrics(trainer.state.global_step, {f"{name}_{label}": v for name, v in result.items()})
            which = "people's labels" if label == "human" else "a held-out split of the training pairs"
            return (
                f"accuracy {result['accuracy']:.3f} on {len(data)} pairs of {which}, none trained on; "
                f"calibration error {result['ece']:.3f}"
            )
        return "no accuracy: no pairs were held out (every pair was used for training)"

    run_trainer(ctx, trainer, tokenizer, evaluate)


def soft_label_trainer():
    """TRL's RewardTrainer with the cross-entropy against P(chosen better): the `soft_label` column rides
    through TRL's collator beside its inputs, and the loss is recomputed from the same rewards (TRL's own
    metrics, accuracy and margin, are kept)."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            if "soft_label" in examples[0]:
                batch["soft_label"] = torch.tensor([e["soft_label"] for e in examples], dtype=torch.float)
            return batch

    class SoftLabelRewardTrainer(RewardTrainer):
        def __init__(self, *args, processing_class, **kwargs):
            collator = SoftLabelCollator(pad_token_id=processing_class.pad_token_id)
            super().__init__(*args, processing_class=processing_class, data_collator=collator, **kwargs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, "soft_label"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            soft = inputs.pop("soft_label", None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            if soft is not None:
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                gap = chosen - rejected
                loss = -(soft * torch.nn.functional.logsigmoid(gap) + (1 - soft) * torch.nn.functional.logsigmoid(-gap))
                loss = loss.mean()
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer


# --- the reward model's evaluation on held-out pairs --------------------------------------------------------


def _chat(turns) -> list[dict]:
    return list(turns) if not isinstance(turns, str) else [{"role": "user", "content": turns}]


def _answer(turns) -> str:
    return turns if isinstance(turns, str) else turns[-1]["content"]


def pair_rewards(model, tokenizer, data, max_length: int, batch_size: int = 16) -> tuple[list[float], list[float]]:
    """The model's reward for each pair's chosen and for its rejected answer, scored as training saw them."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "right"  # the classifier reads the last token that is not padding
    scores = {}
    for side in ("chosen", "rejected"):
        chats = [_chat(r["prompt"]) + [{"role": "assistant", "content": _answer(r[side])}] for r in data]
        texts = tokenizer.apply_chat_template(chats, tokenize=False)
        scores[side] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                scores[side] += model(**batch).logits[:, 0].float().tolist()
    return scores["chosen"], scores["rejected"]


def answer_lengths(tokenizer, data) -> tuple[list[int], list[int]]:
    return tuple(
        [len(tokenizer(_answer(r[side]), add_special_tokens=False).input_ids) for r in data]
        for side in ("chosen", "rejected")
    )


def evaluation(chosen: list[float], rejected: list[float], lengths: tuple[list[int], list[int]]) -> dict[str, float]:
    """Accuracy (the chosen answer scored higher), expected calibration error of P(chosen better) = σ(Δ) over
    10 confidence bins, and the mean reward of short, medium and long answers (terciles of length in
    tokens): a reward that grows with length is the classic hack."""
    import numpy as np

    gap = np.array(chosen) - np.array(rejected)
    p = 1 / (1 + np.exp(-gap))
    correct = (gap > 0).astype(float)
    confidence = np.maximum(p, 1 - p)
    calibration_error = ece(confidence, correct, bins=10, low=0.5, high=1.0)
    rewards, tokens = np.array(chosen + rejected), np.array(lengths[0] + lengths[1])
    edges = np.quantile(tokens, [1 / 3, 2 / 3])
    tercile = np.searchsorted(edges, tokens, side="right")
    by_length = {
        f"reward_{name}": float(rewards[tercile == i].mean())
        for i, name in enumerate(("short", "medium", "long"))
        if (tercile == i).any()
    }
    return {"accuracy": float(correct.mean()), "ece": calibration_error, **by_length}


RM = training_kind(RewardConfig, train)
