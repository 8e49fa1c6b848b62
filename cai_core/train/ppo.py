"""PPO for RL-CAI on torch: maximise E[R(x, y)] - β·KL(π || π_ref), as in Ouyang et al. 2022 and
Bai et al. 2022. TRL 1.16 no longer ships a PPO trainer, so this is ours.

Each step samples one rollout per prompt from the policy, scores it with the reward (a sequence
classifier, or a Python callable), turns the score and a per-token KL penalty against the frozen
reference into per-token rewards, estimates advantages with GAE from a value model, then takes
`ppo_epochs` passes of clipped policy and value updates over minibatches of the rollouts. With LoRA the
policy and the value model each train an adapter (and the value its head), and the reference is the policy
with its adapter off.

With several processes (`nproc`), each rank samples its own `batch_size` rollouts of the step's prompts,
advantages (and rewards, when whitened) are whitened over every rank's rollouts, gradients are averaged
across ranks after each backward pass (what DDP does, without its wrapper: the value model is called
through its backbone), and β follows the KL of all ranks. The defaults (4 rollouts, 2 epochs) take about
12 s a step with the default model on a 2-core CPU; on a GPU, raise batch_size and ppo_epochs (Ouyang et al.
used 4 epochs).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..workspace import Workspace, replace_folder
from .config import LoraOptions, TrainConfig, TrainError, reward_model_field
from .context import RunContext, save_final
from .data import prompt_rows
from .launch import training_kind
from .models import checkpoints
from .monitor import MonitorOptions, greedy_answers, report_alerts
from .ppo_math import (
    AdaptiveKL,
    average_gradients,
    distributed,
    gae,
    masked_mean,
    masked_whiten,
    sequence_kl,
    sum_over_ranks,
)
from .ppo_models import PPOModels, forward_policy, forward_value, reward_scores
from .rollouts import RolloutOptions, VLLMRollouts, record_rollout_engine


@dataclass
class PPOConfig(RolloutOptions, MonitorOptions, LoraOptions, TrainConfig):
    kind = "ppo"
    summary = "RL-CAI: PPO against a reward model, with a KL penalty to the reference."
    starts_from_sft = needs_reward_model = data_parallel_only = True

    learning_rate: float = field(default=3e-6, metadata={"help": "Learning rate of the policy and the value model."})
    batch_size: int = field(default=4, metadata={"help": "Rollouts (prompts, one answer each) per step and process."})
    reward_model: str = reward_model_field()
    value_model: str | None = field(
        default=None,
        metadata={
            "help": "Value model to start from; the reward model when it is a model, else the policy.",
            "model": True,
        },
    )
    kl_coef: float = field(
        default=0.05, metadata={"help": "β of the per-token KL penalty (the start, when adaptive).", "label": "KL β"}
    )
    adaptive_kl: bool = field(
        default=False, metadata={"help": "Adapt β towards the KL target (Ziegler et al. 2019).", "label": "Adaptive KL"}
    )
    kl_target: float = field(
        default=6.0, metadata={"help": "Adaptive β: the per-answer KL to aim for.", "label": "KL target"}
    )
    kl_horizon: int = field(
        default=10000, metadata={"help": "Adaptive β: episodes over which β adjusts.", "label": "KL horizon"}
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount.", "label": "Discount γ"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ.", "label": "GAE λ"})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip.", "label": "Policy clip range"})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Value clip around the rollout's values.", "label": "Value clip range"}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss.", "label": "Value loss weight"})
    ppo_epochs: int = field(default=2, metadata={"help": "Passes over each batch of rollouts.", "label": "PPO epochs"})
    num_minibatches: int = field(
        default=1, metadata={"help": "Minibatches per pass (must divide the batch size).", "label": "Minibatches"}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Longest sampled answer.", "label": "Max answer tokens"})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards before GAE."})
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Subtract this from the score of an answer cut off before its end token.",
            "label": "Missing-EOS penalty",
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping.", "label": "Max gradient norm"})
    ptx_coef: float = field(
        default=0.0,
        metadata={
            "help": "α of L = L_RL + α·L_SFT: the SL-CAI loss on the revisions added to each update (InstructGPT's "
            "PPO-ptx); 0: none.",
            "label": "SFT loss weight α",
        },
    )
    ptx_dataset: str = field(
        default="store",
        metadata={
            "help": "The SFT data for α: store (the SL-CAI revisions) or a messages or prompt/completion file.",
            "label": "SFT data for α",
            "path": True,
        },
    )

    def check(self) -> None:
        super().check()
        if self.batch_size % self.num_minibatches:
            raise TrainError(
                f"is {self.num_minibatches}: it must divide the batch size ({self.batch_size})", "num_minibatches"
            )
        if self.temperature <= 0:
            raise TrainError("must be above 0: PPO needs sampled answers", "temperature")
        self.check_monitor()
        self.check_rollouts()
        if not self.ptx_coef >= 0:
            raise TrainError(f"is {self.ptx_coef}: it must be 0 or more", "ptx_coef")
        if (self.batch_size // self.num_minibatches) % self.grad_accum:
            raise TrainError(
                f"is {self.grad_accum}: it must divide the minibatch ({self.batch_size // self.num_minibatches} "
                "rollouts)",
                "grad_accum",
            )

    def build_data(self, ws: Workspace) -> dict[str, pd.DataFrame]:
        data = {"train": prompt_rows(self.dataset, ws)}
        if self.ptx_coef > 0:
            from .sft import SFTConfig

            data["ptx"] = SFTConfig(dataset=self.ptx_dataset).build_data(ws)["train"]
        return data


# --- the loop ---------------------------------------------------------------------------------------


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The prompts of a step: epochs of seeded shuffles, a function of the step alone, so that a resumed
    run sees what the killed one would have."""
    import numpy as np

    positions = range(step * batch_size, (step + 1) * batch_size)
    epochs = {e: np.random.default_rng([seed, e]).permutation(n) for e in {pos // n for pos in positions}}
    return [int(epochs[pos // n][pos % n]) for pos in positions]


def train(ctx: RunContext) -> None:
    import torch
    import torch.distributed as dist

    c: PPOConfig = ctx.config
    own_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not distributed()
    if own_group:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # NCCL works on the current device
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed() else (1, 0)
    try:
        _train(ctx, c, world, rank)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(ctx: RunContext, c: PPOConfig, world: int, rank: int) -> None:
    import torch

    resume_from = ctx.last_checkpoint()
    models = PPOModels(ctx, resume_from)
    tok = models.tokenizer
    params = [p for model in (models.policy, models.value) for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.learning_rate, eps=1e-5)
    kl_control = AdaptiveKL(c.kl_coef, c.kl_target, c.kl_horizon, c.adaptive_kl)
    step = 0
    if resume_from:
        state = torch.load(resume_from / "state.pt", map_location=models.device, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        step, kl_control.beta = state["step"], state["beta"]
    prompts = list(ctx.dataset("train")["prompt"])
    prompts, held_out = c.split_held_out(prompts)
    ptx = SFTBatches(ctx.dataset("ptx"), tok, c.max_length) if c.ptx_coef > 0 else None
    eos = tok.eos_token_id
    monitor = c.build_monitor([p[-1]["content"] for p in held_out], ctx.ws) if rank == 0 else None
    if monitor:
        with models.reference() as ref:
            monitor.start(lambda texts: greedy_answers(ref or models.policy, tok, texts, c.max_new_tokens))
    rollouts = _start_rollouts(ctx, c, models)
    ctx.progress(step)
    while step < c.max_steps:
        if ctx.stop_requested():
            _save_checkpoint(ctx, models, optimizer, step, kl_control.beta)
            ctx.report_rank(models.policy, step)
            ctx.cancelled(step)
            return
        # the step's prompts for every rank, this rank's share of them
        indices = batch_indices(step, c.batch_size * world, len(prompts), c.seed)
        batch_prompts = [prompts[i] for i in indices[rank * c.batch_size : (rank + 1) * c.batch_size]]
        torch.manual_seed(c.seed * 100003 + step + 7919 * rank)
        begun = time.perf_counter()
        metrics, answers, scores = _ppo_step(c, models, optimizer, kl_control, batch_prompts, eos, world, ptx, rollouts)
        metrics["rollout_share"] = metrics.pop("rollout_seconds") / (time.perf_counter() - begun)
        step += 1
        metrics["beta"] = kl_control.beta
        metrics["episodes"] = step * c.batch_size * world
        if monitor:
            metrics |= monitor.observe(
                step,
                answers,
                scores,
                metrics["kl"],
                lambda texts: greedy_answers(models.policy, tok, texts, c.max_new_tokens),
            )
            report_alerts(ctx, monitor, step)
        if step % c.logging_steps == 0 or step == c.max_steps:
            ctx.log_metrics(step, metrics)
        ctx.progress(step)
        if step % c.save_steps == 0 and step < c.max_steps:
            _save_checkpoint(ctx, models, optimizer, step, kl_control.beta)
    ctx.report_rank(models.policy, step)
    save_final(ctx, models.policy, tok)
    ctx.finish(ctx.final_dir, step)


def _ppo_step(
    c: PPOConfig,
    models: PPOModels,
    optimizer,
    kl_control: AdaptiveKL,
    prompts: list,
    eos: int,
    world: int,
    ptx: SFTBatches | None,
    rollouts: VLLMRollouts | None = None,
) -> tuple[dict, list[str], list[float]]:
    """One PPO step on this rank's prompts: (metrics averaged over ranks, this rank's answers, their scores)."""
    import torch

    tok = models.tokenizer
    texts = tok.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(models.device)
    context = enc.input_ids.shape[1]
    begun = time.perf_counter()
    answers = sample_answers(c, models, enc, eos, rollouts)
    rollout_seconds = time.perf_counter() - begun
    # everything after the first end token is padding: the answer ends there
    is_eos = answers == eos
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    answer_mask = (~after_eos).float()
    answers = answers.masked_fill(after_eos, tok.pad_token_id)
    has_eos = is_eos.any(1)
    lengths = answer_mask.sum(1).long()
    input_ids = torch.cat([enc.input_ids, answers], 1)
    attention = torch.cat([enc.attention_mask, answer_mask.long()], 1)

    with torch.no_grad(), models.autocast():
        old_logprobs, _ = forward_policy(models.policy, input_ids, attention, context, c.temperature)
        with models.reference() as ref:
            ref_logprobs, _ = forward_policy(ref or models.policy, input_ids, attention, context, c.temperature)
        old_values = forward_value(models.value, input_ids, attention, context)
    answer_ids = [a[:n].tolist() for a, n in zip(answers, lengths, strict=True)]
    answer_texts = tok.batch_decode(answer_ids, skip_special_tokens=True)
    scores = reward_scores(models, prompts, answer_texts, answer_ids)
    if c.missing_eos_penalty is not None:
        scores = scores - c.missing_eos_penalty * (~has_eos).float()

    kl = (old_logprobs - ref_logprobs) * answer_mask
    rewards = -kl_control.beta * kl
    last = (lengths - 1).clamp(min=0)
    rewards[torch.arange(len(last)), last] += scores
    if c.whiten_rewards:
        rewards = masked_whiten(rewards, answer_mask, shift_mean=False)
    advantages, returns = gae(rewards, old_values, answer_mask, c.gamma, c.lam)
    advantages = masked_whiten(advantages, answer_mask)

    names = ("policy_loss", "value_loss", "clipfrac", "approxkl", "entropy") + (("sft_loss",) if ptx else ())
    stats: dict[str, list[float]] = {k: [] for k in names}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    size = c.batch_size // c.num_minibatches
    for _ in range(c.ppo_epochs):
        for minibatch in torch.randperm(c.batch_size).split(size):
            optimizer.zero_grad()
            # gradient accumulation: the minibatch's update, from grad_accum smaller passes
            for idx in minibatch.split(size // c.grad_accum):
                mask = answer_mask[idx]
                with models.autocast():
                    logprobs, entropy = forward_policy(
                        models.policy, input_ids[idx], attention[idx], context, c.temperature
                    )
                    values = forward_value(models.value, input_ids[idx], attention[idx], context)
                ratio = (logprobs - old_logprobs[idx]).exp()
                pg_plain = -advantages[idx] * ratio
                pg_clipped = -advantages[idx] * ratio.clamp(1 - c.cliprange, 1 + c.cliprange)
                policy_loss = masked_mean(torch.max(pg_plain, pg_clipped), mask)
                values_clipped = old_values[idx] + (values - old_values[idx]).clamp(
                    -c.cliprange_value, c.cliprange_value
                )
                value_loss = 0.5 * masked_mean(
                    torch.max((values - returns[idx]) ** 2, (values_clipped - returns[idx]) ** 2), mask
                )
                loss = policy_loss + c.vf_coef * value_loss
                if ptx:
                    sft_loss = _sft_loss(models, ptx.sample(len(idx)))
                    loss = loss + c.ptx_coef * sft_loss
                    stats["sft_loss"].append(sft_loss.item())
                (loss / c.grad_accum).backward()
                with torch.no_grad():
                    stats["policy_loss"].append(policy_loss.item())
                    stats["value_loss"].append(value_loss.item())
                    stats["clipfrac"].append(masked_mean((pg_clipped > pg_plain).float(), mask).item())
                    stats["approxkl"].append(0.5 * masked_mean((logprobs - old_logprobs[idx]) ** 2, mask).item())
                    stats["entropy"].append(masked_mean(entropy, mask).item())
            average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            optimizer.step()
    if rollouts:
        begun = time.perf_counter()
        rollouts.sync(models.policy)
        rollout_seconds += time.perf_counter() - begun  # the hand-over is part of what the engine costs

    kl_sum = sum_over_ranks(sequence_kl(old_logprobs, ref_logprobs, answer_mask).sum()).item()
    mean_kl = kl_sum / (len(prompts) * world)
    kl_control.update(mean_kl, c.batch_size * world)
    local = {
        "reward": scores.mean().item(),
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        "non_score_reward": (-kl_control.beta * kl).sum(1).mean().item(),
        "response_length": lengths.float().mean().item(),
        "eos_fraction": has_eos.float().mean().item(),
        **{name: sum(v) / len(v) for name, v in stats.items()},
    }
    # every rank's mean, averaged (ranks hold equal numbers of rollouts)
    means = sum_over_ranks(torch.tensor(list(local.values()), dtype=torch.float64, device=scores.device)) / world
    metrics = {"kl": mean_kl, **dict(zip(local, means.tolist(), strict=True)), "rollout_seconds": rollout_seconds}
    return metrics, answer_texts, scores.tolist()


def sample_answers(c: PPOConfig, models: PPOModels, enc, eos: int, rollouts: VLLMRollouts | None):
    """One sampled answer per prompt of the left-padded batch `enc`, as token ids padded on the right; from the
    policy's `generate`, or from the vLLM engine that holds the policy's current weights."""
    import torch

    tok = models.tokenizer
    if rollouts is None:
        with torch.no_grad(), models.autocast():
            out = models.policy.generate(
                **enc,
                do_sample=True,
                temperature=c.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=c.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )
        return out[:, enc.input_ids.shape[1] :]
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(enc.input_ids, enc.attention_mask, strict=True)]
    # the engine's seeds come from torch's generator, which each step seeds: a resumed run draws the same
    seed = int(torch.randint(2**31 - 1, ()).item())
    sampled = rollouts.sample(prompts, temperature=c.temperature, max_new_tokens=c.max_new_tokens, eos=eos, seed=seed)
    width = max(1, *(len(a) for a in sampled))
    answers = torch.full((len(sampled), width), tok.pad_token_id, dtype=torch.long)
    for row, tokens in enumerate(sampled):
        answers[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return answers.to(models.device)


def _start_rollouts(ctx: RunContext, c: PPOConfig, models: PPOModels) -> VLLMRollouts | None:
    """The run's rollout engine (None: the policy's generate); the engine starts with the policy's current weights
    (a checkpoint's, LoRA's)."""
    from .models import resolve_model

    if record_rollout_engine(ctx) == "hf":
        return None
    import torch

    dtype = "bfloat16" if models.autocast_dtype == torch.bfloat16 else "float32"
    rollouts = VLLMRollouts(resolve_model(c.model, ctx.ws), dtype)
    rollouts.sync(models.policy)
    return rollouts


class SFTBatches:
    """The supervised term's examples (prompt/completion conversations), tokenised once; batches are drawn with
    torch's generator, which each step seeds, so that a resumed run draws what the killed one would have."""

    def __init__(self, data, tok, max_length: int):
        self.examples = []
        for row in data:
            prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
            prompt_len = len(tok(prompt, add_special_tokens=False).input_ids)
            ids = tok(full, add_special_tokens=False).input_ids[:max_length]
            self.examples.append((ids, min(prompt_len, len(ids))))
        self.pad = tok.pad_token_id

    def sample(self, n: int):
        import torch

        picked = [self.examples[i] for i in torch.randint(len(self.examples), (n,)).tolist()]
        width = max(len(ids) for ids, _ in picked)
        input_ids = torch.full((n, width), self.pad)
        labels = torch.full((n, width), -100)
        attention = torch.zeros((n, width), dtype=torch.long)
        for row, (ids, prompt_len) in enumerate(picked):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])  # the loss on the answer only
        return input_ids, attention, labels


def _sft_loss(models: PPOModels, batch):
    input_ids, attention, labels = (t.to(models.device) for t in batch)
    with models.autocast():
        return models.policy(input_ids=input_ids, attention_mask=attention, labels=labels).loss.float()


def _save_checkpoint(ctx: RunContext, models: PPOModels, optimizer, step: int, beta: float) -> None:
    import torch

    if not ctx.main:
        return

    def write(folder: Path) -> None:
        models.policy.save_pretrained(folder / "policy")
        models.tokenizer.save_pretrained(folder / "policy")
        models.value.save_pretrained(folder / "value")
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "beta": beta}, folder / "state.pt")

    ctx.checkpoints_dir.mkdir(exist_ok=True)
    replace_folder(ctx.checkpoints_dir / f"checkpoint-{step}", write)
    for old in checkpoints(ctx.checkpoints_dir)[:-2]:
        shutil.rmtree(old, ignore_errors=True)


PPO = training_kind(PPOConfig, train)
