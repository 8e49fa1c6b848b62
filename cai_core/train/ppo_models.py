"""The models a PPO run holds on one device: policy, frozen reference, value model and reward (with LoRA, the
reference and the reward are adapters switched off), and their forward passes."""

from __future__ import annotations

import os
from pathlib import Path

from .config import LoraOptions, use_bf16
from .context import RunContext
from .models import load_tokenizer, resolve_model, resolve_reward
from .ppo_math import distributed


class PPOModels:
    """Policy, frozen reference, value model and the reward, on one device."""

    def __init__(self, ctx: RunContext, resume_from):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        c = ctx.config  # a PPOConfig
        self.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
        self.autocast_dtype = torch.bfloat16 if use_bf16(c) else None
        base = resolve_model(c.model, ctx.ws)
        self.tokenizer = load_tokenizer(base)
        self.tokenizer.padding_side = "left"
        reward = ctx.reward_fn or resolve_reward(c.reward_model, ctx.ws)
        value_start = (
            resolve_model(c.value_model, ctx.ws) if c.value_model else (reward if isinstance(reward, str) else base)
        )
        if c.lora:
            # the reference is the policy with its adapter switched off: one copy of the policy's base weights.
            # The value model is a LoRA-wrapped copy of its start (the reward model by default), not a head on
            # the policy's adapted backbone: it keeps InstructGPT's start from the reward model (a head on the
            # policy's backbone would start from nothing, its first advantages noise), and the value loss stays
            # out of the policy's adapter (a shared one would be pulled by both losses, weighed by vf_coef). The
            # reward model is then that copy with its adapter off, so LoRA PPO holds two copies of base weights
            # (policy, value) instead of four, and the optimiser's state is the adapters' and the value head's.
            saved = (resume_from / "policy", resume_from / "value") if resume_from else (None, None)
            self.policy = _adapted(AutoModelForCausalLM.from_pretrained(base), c, "CAUSAL_LM", saved[0])
            self.value = _adapted(
                AutoModelForSequenceClassification.from_pretrained(value_start, num_labels=1), c, "SEQ_CLS", saved[1]
            )
            self.ref = None
        else:
            policy_path = resume_from / "policy" if resume_from else base
            value_path = resume_from / "value" if resume_from else value_start
            self.policy = AutoModelForCausalLM.from_pretrained(policy_path)
            self.value = AutoModelForSequenceClassification.from_pretrained(value_path, num_labels=1)
            self.ref = AutoModelForCausalLM.from_pretrained(base).to(self.device).requires_grad_(False)
        self.policy.to(self.device)
        self.value.to(self.device)
        if c.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
            self.value.gradient_checkpointing_enable()
        # dropout off everywhere: PPO's ratios compare the same function before and after an update
        for model in (self.policy, self.ref, self.value):
            if model is not None:
                model.eval()
        if distributed():  # a fresh value head is random: every rank starts from rank 0's weights
            import torch.distributed as dist

            for tensor in [*self.policy.state_dict().values(), *self.value.state_dict().values()]:
                dist.broadcast(tensor, 0)
        self.reward_fn = reward if callable(reward) else None
        self.reward = None
        if self.reward_fn is None:
            self.reward_tokenizer = load_tokenizer(reward)
            self.reward_tokenizer.padding_side = "right"
            if not (c.lora and value_start == reward):
                self.reward = AutoModelForSequenceClassification.from_pretrained(reward, num_labels=1).to(self.device)
                self.reward.eval().requires_grad_(False)
            (self.reward or self.value).config.pad_token_id = self.reward_tokenizer.pad_token_id

    def autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype)

    def reference(self):
        """The frozen reference model, as a context: the policy with its LoRA adapter off, or the copy."""
        import contextlib

        if self.ref is None:
            return self.policy.disable_adapter()
        return contextlib.nullcontext(self.ref)

    def reward_model(self):
        """The frozen reward model, as a context: the value model with its LoRA adapter off, or the copy."""
        import contextlib

        if self.reward is None:
            return self.value.disable_adapter()
        return contextlib.nullcontext(self.reward)


def _adapted(model, c: LoraOptions, task_type: str, saved: Path | None):
    """`model` with a trainable LoRA adapter: the one saved at `saved` (a resumed run), else a fresh one. For a
    sequence classifier peft also trains (and saves) the `score` head."""
    from peft import PeftModel, get_peft_model

    if saved:
        return PeftModel.from_pretrained(model, saved, is_trainable=True)
    return get_peft_model(model, c.peft_config(task_type))


def forward_policy(model, input_ids, attention_mask, context: int, temperature: float):
    """Log-probabilities of the answer tokens and the entropy at each answer position."""
    import torch

    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    answer_len = input_ids.shape[1] - context
    logits = (
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, logits_to_keep=answer_len + 1)
        .logits[:, :-1]
        .float()
        / temperature
    )
    logprobs_all = torch.log_softmax(logits, dim=-1)
    logprobs = logprobs_all.gather(-1, input_ids[:, context:, None]).squeeze(-1)
    entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    return logprobs, entropy


def forward_value(model, input_ids, attention_mask, context: int):
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if hasattr(model, "get_base_model"):  # peft: the adapters live inside the base model's layers
        model = model.get_base_model()
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    return model.score(hidden[:, context - 1 : -1]).squeeze(-1).float()


def reward_scores(models: PPOModels, prompts: list, answers: list[str], answer_ids: list[list[int]]):
    import torch

    if models.reward_fn is not None:
        texts = [p[-1]["content"] for p in prompts]
        values = models.reward_fn(prompts=texts, completions=answers, completion_ids=answer_ids)
        return torch.tensor([float(v) for v in values], device=models.device)
    tok = models.reward_tokenizer
    chats = [list(p) + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)]
    texts = tok.apply_chat_template(chats, tokenize=False)
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(models.device)
    with torch.no_grad(), models.autocast(), models.reward_model() as reward:
        return (reward or models.value)(**batch).logits[:, 0].float()
