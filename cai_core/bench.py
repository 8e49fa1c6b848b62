"""`cai bench generate`: the sequential reference loop against the batched pipeline, same model,
same prompts, measured in the same run.

`bench_generate` fixes every length: both sides generate exactly the same tokens. `bench_workload`
(`--realistic`) runs what users run, `cai generate`'s defaults, on the reference loop and on the pipeline
on each engine (transformers, vLLM).

The reference loop is the shape of the original CAI example code's `self_critique_loop`: one
prompt at a time, one `generate` call per step. Lengths are fixed (min = max new tokens, greedy)
so that both sides generate exactly the same number of tokens. Few-shot examples are off by
default: they add the same ~1,300 prompt tokens to every critique on both sides, which measures
prompt processing rather than generation (`--few-shot` to include them).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import jobs
from .backends import SamplingParams, load_backend
from .config import CheckedConfig
from .constitution import load_constitution
from .critique import GenerateConfig, choose_principle, critique_chat, revision_chat
from .prompts import load_prompts
from .workspace import Workspace

if TYPE_CHECKING:
    import torch


@dataclass
class BenchConfig(CheckedConfig):
    """`cai bench generate`'s settings; each field is a flag. Unset sizes take the mode's defaults: fixed lengths
    (32 prompts, 3 rounds, exactly 32 tokens) or `--realistic` (64 prompts, 4 rounds, at most 128 tokens)."""

    model: str = field(default="default", metadata={"help": "Model spec, on every side.", "model_spec": True})
    realistic: bool = field(
        default=False,
        metadata={
            "help": "`cai generate`'s defaults (few-shot, sampling, natural stopping; early stop off): the reference "
            "loop on a subsample, scaled, then the pipeline on each engine."
        },
    )
    prompts: int | None = field(
        default=None, metadata={"help": "Demo prompts (cycled); 32, or 64 with --realistic.", "min": 1}
    )
    rounds: int | None = field(
        default=None, metadata={"help": "Critique-revision rounds; 3, or 4 with --realistic.", "min": 0}
    )
    new_tokens: int | None = field(
        default=None, metadata={"help": "Tokens per step (exactly); 32, or at most 128 with --realistic.", "min": 1}
    )
    few_shot: bool = field(default=False, metadata={"help": "Fixed lengths: include the constitution's examples."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "Precision of the local model, on every side."}
    )
    reference_prompts: int = field(
        default=4, metadata={"help": "With --realistic: the reference's subsample.", "min": 1}
    )
    engines: str = field(
        default="hf,vllm", metadata={"help": "With --realistic: the pipeline's engines, comma-separated."}
    )


def run_bench(config: BenchConfig, ws: Workspace, on_result: Callable[[str, dict], None] | None = None) -> dict:
    """The benchmark the config names, with each mode's defaults for the sizes it leaves unset."""
    if config.realistic:
        return bench_workload(
            config.model,
            ws,
            prompts=config.prompts or 64,
            rounds=config.rounds or 4,
            new_tokens=config.new_tokens or 128,
            reference_prompts=config.reference_prompts,
            dtype=config.dtype,
            engines=tuple(config.engines.split(",")),
            on_result=on_result,
        )
    return bench_generate(
        config.model,
        ws,
        prompts=config.prompts or 32,
        rounds=config.rounds or 3,
        new_tokens=config.new_tokens or 32,
        few_shot=config.few_shot,
        dtype=config.dtype,
    )


def matmul_flops_per_second(dtype: torch.dtype, max_size: int = 2048, budget_s: float = 0.25) -> float:
    """The CPU's matrix-product rate in DTYPE, for a roofline. The size doubles from 256 only while one product
    is quick, then products repeat for about BUDGET_S: a CPU without bf16 units multiplies bf16 at ~1 GFLOP/s
    (measured here), so the fixed 11 products of 2048 that fp32 does in 1 s took over 3 minutes in bf16."""
    import torch  # here, not at the top: every `cai` command imports this module for its flags

    size = 256
    while True:
        a = torch.randn(size, size, dtype=dtype)
        begun = time.perf_counter()
        a @ a  # also the warm-up
        if time.perf_counter() - begun > 0.02 or size >= max_size:
            break
        size *= 2
    repeats, begun = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - begun) < budget_s or repeats == 0:
        a @ a
        repeats += 1
    return 2 * size**3 * repeats / elapsed


def reference_loop(backend, constitution, prompts, rounds: int, few_shot: bool, params: SamplingParams) -> int:
    """The original example code's loop: one prompt at a time, one `generate` call per step, no early stop.
    Returns the tokens it generated."""
    tokens = 0
    for index, prompt in enumerate(prompts):
        [answer] = backend.generate([[{"role": "user", "content": prompt.prompt}]], params)
        response, tokens = answer.text, tokens + answer.completion_tokens
        for round_ in range(1, rounds + 1):
            principle = choose_principle(constitution, "random", 0, prompt.id, index, round_)
            chat = critique_chat(prompt.prompt, response, principle, constitution, few_shot)
            [critique] = backend.generate([chat], params)
            [revision] = backend.generate([revision_chat(chat, critique.text, principle)], params)
            response = revision.text
            tokens += critique.completion_tokens + revision.completion_tokens
    return tokens


def run_pipeline(config: GenerateConfig, prompts, backend=None) -> tuple[float, int]:
    """`cai generate` on these prompts in a scratch workspace: (seconds, generated tokens)."""
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompts.jsonl"
        prompt_file.write_text(
            "".join(json.dumps({"id": f"p{i}", "prompt": p.prompt}) + "\n" for i, p in enumerate(prompts))
        )
        config = dataclasses.replace(config, prompts=str(prompt_file))
        begun = time.perf_counter()
        job = jobs.run("generate", config, Workspace(Path(tmp)), backends=(backend, backend) if backend else None)
        seconds = time.perf_counter() - begun
        steps = job.read("trace_steps")
        return seconds, sum(s["critique_tokens"] + s["response_tokens"] for s in steps)


def bench_generate(
    model: str,
    ws: Workspace,
    *,
    prompts: int = 32,
    rounds: int = 3,
    new_tokens: int = 32,
    few_shot: bool = False,
    dtype: str = "auto",
) -> dict:
    backend = load_backend(model, ws, dtype)
    constitution_path = ws.constitutions_dir / "hhh.yaml"
    constitution = load_constitution(constitution_path)
    chosen = demo_prompts(ws, prompts)
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.0)
    tokens = prompts * (1 + 2 * rounds) * new_tokens

    begun = time.perf_counter()
    reference_loop(backend, constitution, chosen, rounds, few_shot, params)
    sequential_seconds = time.perf_counter() - begun
    config = GenerateConfig(
        constitution=str(constitution_path),
        prompts="",
        model=model,
        rounds=rounds,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        temperature=0.0,
        early_stop=False,
        few_shot=few_shot,
        dtype=dtype,
    )
    pipeline_seconds, _ = run_pipeline(config, chosen, backend)

    # the roofline of the precision the model runs in: bf16 units are several times faster than fp32
    import torch

    flops = matmul_flops_per_second(getattr(torch, backend.dtype)) if backend.dtype else 0.0
    roofline = flops / (2 * backend.parameters) if backend.parameters else None
    pipeline_rate = tokens / pipeline_seconds
    return {
        "model": backend.name,
        "engine": backend.engine,
        "prompts": prompts,
        "rounds": rounds,
        "few_shot": few_shot,
        "dtype": backend.dtype,
        "generated_tokens_each": tokens,
        "sequential_tokens_per_s": round(tokens / sequential_seconds, 1),
        "pipeline_tokens_per_s": round(pipeline_rate, 1),
        "speedup": round(sequential_seconds / pipeline_seconds, 2),
        "matmul_gflops": round(flops / 1e9, 1),
        "roofline_tokens_per_s": round(roofline, 1) if roofline else None,
        "pipeline_fraction_of_roofline": round(pipeline_rate / roofline, 3) if roofline else None,
    }


def bench_workload(
    model: str,
    ws: Workspace,
    *,
    prompts: int = 64,
    rounds: int = 4,
    new_tokens: int = 128,
    reference_prompts: int = 4,
    dtype: str = "auto",
    engines: tuple[str, ...] = ("hf", "vllm"),
    on_result: Callable[[str, dict], None] | None = None,
) -> dict:
    """The workload people run: `cai generate`'s defaults (few-shot on, sampling, natural stopping, 128 max
    tokens), with early stop off so that every side does the same steps, on `prompts` demo prompts.

    Each side is timed in this run: the reference loop on the first `reference_prompts` only (it is slow),
    its wall time scaled to all prompts; then the pipeline on each engine, the vLLM engine's start-up timed
    apart from its run. With natural stopping the sides generate different token counts, so the comparison
    is generated tokens per second."""
    constitution_path = ws.constitutions_dir / "hhh.yaml"
    constitution = load_constitution(constitution_path)
    chosen = demo_prompts(ws, prompts)
    config = GenerateConfig(
        str(constitution_path), "", model, rounds=rounds, max_new_tokens=new_tokens, early_stop=False, dtype=dtype
    )
    result: dict = {"model": model, "prompts": prompts, "rounds": rounds, "max_new_tokens": new_tokens}

    def record(side: str, seconds: float, tokens: int, **extra) -> None:
        result[side] = {
            "wall_s": round(seconds, 1),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            **extra,
        }
        if on_result:
            on_result(side, result[side])

    hf = load_backend(f"hf:{model}", ws, dtype)
    sample = chosen[:reference_prompts]
    begun = time.perf_counter()
    tokens = reference_loop(hf, constitution, sample, rounds, config.few_shot, config.sampling())
    seconds = time.perf_counter() - begun
    record(
        "reference",
        seconds * prompts / len(sample),
        round(tokens * prompts / len(sample)),
        note=f"measured on {len(sample)} of {prompts} prompts, wall time and tokens scaled to all",
    )
    for engine in engines:
        begun = time.perf_counter()
        backend = load_backend(f"{engine}:{model}", ws, dtype)
        started = time.perf_counter() - begun
        seconds, tokens = run_pipeline(dataclasses.replace(config, model=f"{engine}:{model}"), chosen, backend)
        record(f"{engine}_pipeline", seconds, tokens, engine_start_s=round(started, 1), dtype=backend.dtype)
    for engine in engines:
        side = result[f"{engine}_pipeline"]
        side["tokens_per_s_vs_reference"] = round(side["tokens_per_s"] / result["reference"]["tokens_per_s"], 2)
    if "hf" in engines and "vllm" in engines:
        result["vllm_vs_hf_tokens_per_s"] = round(
            result["vllm_pipeline"]["tokens_per_s"] / result["hf_pipeline"]["tokens_per_s"], 2
        )
    return result


def demo_prompts(ws: Workspace, count: int) -> list:
    """`count` demo prompts, cycling through the set when it has fewer."""
    prompt_set = load_prompts(ws.demo_prompts)
    return [prompt_set.prompts[i % len(prompt_set.prompts)] for i in range(count)]
