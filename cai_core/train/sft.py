"""SL-CAI supervised fine-tuning with TRL's SFTTrainer on the final revisions.

Examples are prompt/completion conversations, so TRL's completion-only loss puts the loss on the
assistant's answer alone. That is the assistant-only loss without needing `{% generation %}` markers
in the chat template, which the default model's template lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..workspace import Workspace
from .config import LoraOptions, TrainConfig, TrainError
from .context import RunContext
from .data import file_rows, need_columns, store_rows
from .launch import training_kind
from .models import load_tokenizer, resolve_model
from .trainer import run_trainer, trainer_arguments


@dataclass
class SFTConfig(LoraOptions, TrainConfig):
    kind = "sft"
    summary = "SL-CAI supervised fine-tuning on the final revisions (TRL SFTTrainer)."

    constitution_version: str | None = field(
        default=None, metadata={"help": "Store data only: traces of this constitution version.", "text": True}
    )
    max_round: int | None = field(default=None, metadata={"help": "Store data only: the revision of round N at most."})
    helpful_data: str | None = field(
        default=None,
        metadata={"help": "A messages or prompt/completion file mixed in (helpfulness data).", "path": True},
    )

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        if self.dataset == "store":
            rows = store_rows(ws, "sft", constitution_version=self.constitution_version, max_round=self.max_round)
            if rows.empty:
                raise TrainError(
                    "no SL-CAI traces match in the store: generate some first, or loosen the filters", "dataset"
                )
            frames = [prompt_completion(rows, "the store")]
        else:
            frames = [prompt_completion(file_rows(self.dataset), self.dataset)]
        if self.helpful_data:
            frames.append(prompt_completion(file_rows(self.helpful_data), self.helpful_data))
        return {"train": pd.concat(frames, ignore_index=True)}


def prompt_completion(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rows as conversational prompt/completion: messages split before the last assistant turn."""
    if "messages" in frame.columns:
        need_columns(frame, ("messages",), source)
        messages = [list(m) for m in frame.messages]
        if any(not m or m[-1]["role"] != "assistant" for m in messages):
            raise TrainError(f"{source}: every conversation must end with an assistant message", "dataset")
        return pd.DataFrame({"prompt": [m[:-1] for m in messages], "completion": [m[-1:] for m in messages]})
    need_columns(frame, ("prompt", "completion"), source)
    return frame[["prompt", "completion"]].reset_index(drop=True)


def train(ctx: RunContext) -> None:
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    c: SFTConfig = ctx.config
    path = resolve_model(c.model, ctx.ws)
    tokenizer = load_tokenizer(path)
    args = TRLSFTConfig(**trainer_arguments(ctx), max_length=c.max_length, completion_only_loss=True)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=args,
        train_dataset=ctx.dataset("train"),
        processing_class=tokenizer,
        peft_config=c.peft_config("CAUSAL_LM"),
    )
    run_trainer(ctx, trainer, tokenizer)


SFT = training_kind(SFTConfig, train)
