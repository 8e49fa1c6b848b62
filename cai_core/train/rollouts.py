"""Where an RL run samples its rollouts: the policy's own `generate` (hf) or an in-process vLLM engine (vllm).

Either way the policy recomputes the log-probs it trains on; the engine only proposes the tokens. After each
update the vLLM engine is handed the policy's new weights (`VLLMRollouts.sync`), so that it samples from the
policy being trained and not from the checkpoint it loaded. With LoRA the adapter is merged for the hand-over and
unmerged after: the engine holds full weights (vLLM's per-request adapters would need the adapter saved to disk
after every step).

`auto` picks vLLM on a GPU where it is installed and transformers on a CPU: measured on a 2-core CPU
(`benchmarks/bench_train.py --rollouts`, README "RL rollouts: hf against vLLM"), a run of a few steps is slower
on vLLM (its start-up), PPO's steps are no faster on it, and only GRPO's grouped rollouts gain per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import TrainError

ENGINES = ("auto", "hf", "vllm")


@dataclass
class RolloutOptions:
    """The engine that samples an RL run's rollouts, declared once for PPO, GRPO and RLOO."""

    rollout_engine: Literal["auto", "hf", "vllm"] = field(
        default="auto",
        metadata={
            "help": "What samples the rollouts: hf (the policy's generate), vllm (an engine given the new weights "
            "after each update), or auto (vLLM on a GPU where it is installed, else hf).",
            "label": "Rollout engine",
        },
    )

    def check_rollouts(self) -> None:
        if self.rollout_engine not in ENGINES:
            raise TrainError(f"is {self.rollout_engine!r}: choose one of {', '.join(ENGINES)}", "rollout_engine")
        if self.rollout_engine == "vllm":
            from ..backends.vllm import INSTALL_HINT, vllm_missing

            missing = vllm_missing()
            if missing:
                raise TrainError(
                    f"is vllm, but vLLM is not available here ({missing}): {INSTALL_HINT}", "rollout_engine"
                )

    def rollouts_on(self) -> str:
        """The engine this run samples on: hf or vllm."""
        if self.rollout_engine != "auto":
            return self.rollout_engine
        import torch

        from ..backends.vllm import vllm_missing

        return "vllm" if torch.cuda.is_available() and not vllm_missing() else "hf"


def record_rollout_engine(ctx) -> str:
    """The engine this start of the run samples on, appended to the run's `rollouts` records (a resumed run may
    sample on another)."""
    engine = ctx.config.rollouts_on()
    if ctx.main:
        ctx.job.append("rollouts", [{"engine": engine, "rollout_engine": ctx.config.rollout_engine}])
    return engine


class VLLMRollouts:
    """An in-process vLLM engine that samples token ids from chat-formatted prompt ids."""

    def __init__(self, model_path: str, dtype: str | None, gpu_memory: float = 0.3):
        from ..backends.vllm import VLLMBackend

        # one engine per run, its own: a shared one (`load_backend`) would give other jobs the trained weights
        self.backend = VLLMBackend(model_path, dtype=dtype, gpu_memory=gpu_memory)
        self.llm = self.backend.llm

    def sample(
        self, prompts: list[list[int]], *, temperature: float, max_new_tokens: int, eos: int, seed: int
    ) -> list[list[int]]:
        """One answer per prompt. An answer that ended on its end token keeps that token, as `generate`'s do."""
        import vllm

        greedy = temperature <= 0
        params = [
            vllm.SamplingParams(
                temperature=0.0 if greedy else temperature,
                top_p=1.0,
                seed=None if greedy else seed + i,
                max_tokens=max_new_tokens,
                stop_token_ids=[eos],
                ignore_eos=False,
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.backend._run(prompts, params)
        answers = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            if completion.finish_reason == "stop" and (not tokens or tokens[-1] != eos):
                tokens.append(eos)
            answers.append(tokens)
        return answers

    def sync(self, policy) -> None:
        """Hand the policy's current weights to the engine, then drop its prefix cache (computed by the old ones)."""
        # vLLM's in-place reload, not the model's own load_weights: on a CPU the engine repacks its linear
        # weights after loading (their loaders gone), and the reload undoes that, loads, and repacks again
        weights = [(name, tensor.detach()) for name, tensor in full_weights(policy)]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()


def full_weights(policy):
    """The policy's weights by the names of the plain model: a LoRA policy's with its adapter merged in."""
    if not hasattr(policy, "merge_adapter"):
        yield from policy.state_dict().items()
        return
    policy.merge_adapter()
    try:
        prefix = "base_model.model."
        for name, tensor in policy.state_dict().items():
            if "lora_" in name or "modules_to_save" in name:
                continue
            # a copy: unmerging restores these very tensors in place
            yield name.removeprefix(prefix).replace(".base_layer.", "."), tensor.detach().clone()
    finally:
        policy.unmerge_adapter()
