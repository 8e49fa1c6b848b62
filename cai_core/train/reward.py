"""A reward model (a sequence classifier with one output) with TRL's RewardTrainer on AI preferences.

Soft labels enter as a margin, not a soft target: TRL 1.16's RewardTrainer has no soft-target loss,
only `-log σ(r_chosen - r_rejected - margin)`. With margin = margin_scale × confidence (|2P - 1|, P the
judge's probability that the chosen answer is better), a confident label asks for a wide reward gap and
a near-tie only for the right order, the graded margin of Llama 2's reward models. Data without a
confidence (revision pairs, files without the column) trains on hard pairs.

Accuracy is reported on people's labels when the store has any (those pairs are kept out of training,
so the figure is out of sample), else on a held-out split of the training pairs; the run's message and
the metric's name (`accuracy_human` or `accuracy_heldout`) say which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..workspace import Workspace
from .dpo import PreferenceData
from .harness import (
    RunContext,
    TrainConfig,
    TrainError,
    load_tokenizer,
    lora_config,
    resolve_model,
    run_trainer,
    store_rows,
    trainer_arguments,
)

COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass
class RewardConfig(PreferenceData, TrainConfig):
    kind = "rm"

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    margin_scale: float = field(
        default=1.0, metadata={"help": "Margin = this × the label's confidence |2P-1|; 0 trains on hard pairs."}
    )
    eval_fraction: float = field(
        default=0.2, metadata={"help": "Share of pairs held out for accuracy when no human labels exist."}
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (merged into the final model)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise TrainError(f"eval_fraction is {self.eval_fraction}: it must be from 0 to below 1")

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        rows = self.preference_rows(ws, self.dataset).reset_index(drop=True)
        human = pd.DataFrame()
        if self.dataset == "store" and self.labels != "human":
            human = store_rows(ws, "preferences", run_id="human")
        if not human.empty and "pair_id" in rows.columns:
            kept = rows[~rows.pair_id.isin(set(human.pair_id))]
            rows = kept if len(kept) else rows
        train = rows[COLUMNS].copy()
        if "confidence" in rows.columns and self.margin_scale > 0:
            train["margin"] = self.margin_scale * rows.confidence.astype(float)
        if not human.empty:
            return {"train": train, "eval_human": human[COLUMNS]}
        held_out = round(len(train) * self.eval_fraction)
        if held_out == 0:
            return {"train": train}
        shuffled = train.sample(frac=1.0, random_state=self.seed).reset_index(drop=True)
        return {"train": shuffled.iloc[held_out:], "eval_heldout": shuffled.iloc[:held_out][COLUMNS]}


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
    trainer = RewardTrainer(
        model=model,
        args=TRLRewardConfig(**trainer_arguments(ctx), max_length=c.max_length, center_rewards_coefficient=None),
        train_dataset=ctx.dataset("train"),
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, c.lora_r, c.lora_alpha, "SEQ_CLS"),
    )

    def evaluate() -> str:
        for split, label in (("eval_human", "human"), ("eval_heldout", "heldout")):
            data = ctx.dataset(split)
            if data is None:
                continue
            result = trainer.evaluate(eval_dataset=data)
            accuracy = result["eval_accuracy"]
            step = trainer.state.global_step
            ctx.log_metrics(step, {f"accuracy_{label}": accuracy, f"eval_loss_{label}": result["eval_loss"]})
            which = "people's labels" if label == "human" else "a held-out split of the training pairs"
            return f"accuracy {accuracy:.3f} on {len(data)} pairs of {which}"
        return "no pairs left to measure accuracy on"

    run_trainer(ctx, trainer, tokenizer, evaluate)


CONFIGS = (RewardConfig,)
