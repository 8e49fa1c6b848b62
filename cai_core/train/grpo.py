"""GRPO and RLOO with TRL's trainers: the alternatives to PPO that need no value model. Both sample
`num_generations` answers per prompt and use the group (GRPO: its mean and spread; RLOO: the other
answers' mean) as the baseline, against the same reward PPO uses."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd

from ..workspace import Workspace
from .config import LoraOptions, TrainConfig, TrainError, reward_model_field
from .context import RunContext
from .data import prompt_rows
from .launch import training_kind
from .models import load_tokenizer, resolve_model, resolve_reward
from .monitor import MonitorOptions, trl_monitor
from .rollouts import RolloutOptions, record_rollout_engine
from .trainer import run_trainer, trainer_arguments


@dataclass
class GRPOConfig(RolloutOptions, MonitorOptions, LoraOptions, TrainConfig):
    kind = "grpo"
    summary = "GRPO against a reward model (TRL GRPOTrainer): the group of answers is the baseline."
    starts_from_sft = needs_reward_model = True

    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=8, metadata={"help": "Answers per step and device (num_generations divides it)."})
    reward_model: str = reward_model_field()
    num_generations: int = field(
        default=4, metadata={"help": "Answers sampled per prompt (the group).", "label": "Answers per prompt"}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Longest sampled answer.", "label": "Max answer tokens"})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    # TRL's GRPO defaults to 0 (no KL); the objective here is max E[R] - β·KL to the start model, as in PPO and RLOO,
    # so β is stated: 0.04, the value GRPO was published with (DeepSeekMath)
    beta: float = field(
        default=0.04,
        metadata={
            "help": "KL coefficient against the start model (0: no KL term, no reference model).",
            "label": "KL β",
        },
    )

    def check(self) -> None:
        super().check()
        self.check_monitor()
        self.check_rollouts()
        if self.monitor_every % self.logging_steps:
            # the monitor reads the reward and KL the trainer logs, so it judges only on a logged step
            raise TrainError(
                f"is {self.monitor_every}: it must be a multiple of the logging interval ({self.logging_steps})",
                "monitor_every",
            )
        if self.num_generations < 2 or (self.batch_size * self.grad_accum) % self.num_generations:
            raise TrainError(
                f"is {self.num_generations}: it must be at least 2 and divide the batch size × gradient "
                f"accumulation ({self.batch_size * self.grad_accum})",
                "num_generations",
            )

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        train, held_out = self.split_held_out(prompt_rows(self.dataset, ws))
        return {"train": train} | ({"monitor": held_out} if len(held_out) else {})


@dataclass
class RLOOConfig(GRPOConfig):
    kind = "rloo"
    summary = "RLOO against a reward model (TRL RLOOTrainer): the other answers' mean is the baseline."

    beta: float = field(default=0.05, metadata={"help": "KL coefficient against the reference.", "label": "KL β"})


def train(ctx: RunContext) -> None:
    from transformers import AutoModelForCausalLM

    c: GRPOConfig = ctx.config
    if c.kind == "rloo":
        from trl import RLOOConfig as TRLConfig
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer as Trainer
    path = resolve_model(c.model, ctx.ws)
    tokenizer = load_tokenizer(path)
    reward = ctx.reward_fn or resolve_reward(c.reward_model, ctx.ws)
    held_out = ctx.dataset("monitor")
    held_out = [p[-1]["content"] for p in held_out["prompt"]] if held_out is not None and len(held_out) else []
    monitor = c.build_monitor(held_out, ctx.ws) if ctx.main else None
    monitor_answers, monitor_callback = trl_monitor(ctx, monitor, tokenizer, c.max_new_tokens)
    args = TRLConfig(
        **trainer_arguments(ctx),
        **trl_vllm_arguments(record_rollout_engine(ctx)),
        num_generations=c.num_generations,
        max_completion_length=c.max_new_tokens,
        temperature=c.temperature,
        beta=c.beta,
        reward_weights=[1.0, 0.0],  # the monitor's answer reader adds nothing to the reward
    )
    tokenizer.padding_side = "left"
    with process_group_environment_kept():
        trainer = Trainer(
            model=AutoModelForCausalLM.from_pretrained(path),
            reward_funcs=[reward, monitor_answers],
            callbacks=[monitor_callback],
            args=args,
            train_dataset=ctx.dataset("train"),
            processing_class=tokenizer,
            peft_config=c.peft_config("CAUSAL_LM"),
        )
        no_kl = (lambda: f"model in {ctx.final_dir}; {NO_KL_NOTE}") if c.beta == 0 else None
        run_trainer(ctx, trainer, tokenizer, evaluate=no_kl)


@contextmanager
def process_group_environment_kept():
    """TRL's colocate mode writes RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_PORT) into this process's
    environment for its engine. Put back as they were after the run: a process that trains in-process (a
    notebook, the recipe) and then starts a job would hand them on, and the job would take itself for one rank
    of a distributed run (found when a test worker's next training job waited on another's torchrun port)."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def trl_vllm_arguments(engine: str) -> dict:
    """TRL's own vLLM mode for GRPO and RLOO: colocate, an engine inside each training process that TRL hands the
    new weights after each update (one GPU, or several with one engine per process)."""
    if engine != "vllm":
        return {"use_vllm": False}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}


# what a finished run with β = 0 says on its card, as the objective it optimised differs from the seed's
NO_KL_NOTE = "no KL term (β = 0): the reward was optimised with nothing pulling the policy to its start model"


GRPO = training_kind(GRPOConfig, train)
RLOO = training_kind(RLOOConfig, train)
