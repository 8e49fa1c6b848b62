"""`cai bench generate`: the sequential reference loop against the batched pipeline, same model,
same prompts, same number of generated tokens, measured in the same run.

The reference loop is the shape of the original CAI example code's `self_critique_loop`: one
prompt at a time, one `generate` call per step. Lengths are fixed (min = max new tokens, greedy)
so that both sides generate exactly the same number of tokens. Few-shot examples are off by
default: they add the same ~1,300 prompt tokens to every critique on both sides, which measures
prompt processing rather than generation (`--few-shot` to include them).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .backends import SamplingParams, load_backend
from .constitution import load_constitution
from .critique import GenerateConfig, choose_principle, critique_chat, revision_chat, run_generation
from .prompts import load_prompts
from .workspace import Workspace


def matmul_flops_per_second(dtype, size: int = 2048, repeats: int = 10) -> float:
    import torch  # here, not at the top: the CLI reads BenchConfig for its flags without loading torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    begun = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - begun)


@dataclass
class BenchConfig:
    """`cai bench generate`'s settings; each field is a flag."""

    model: str = field(default="default", metadata={"help": "Model spec, on both sides."})
    prompts: int = field(default=32, metadata={"help": "Prompts (the demo set, repeated as needed)."})
    rounds: int = field(default=3, metadata={"help": "Critique→revision rounds per prompt."})
    new_tokens: int = field(default=32, metadata={"help": "Tokens generated per step, exactly."})
    few_shot: bool = field(default=False, metadata={"help": "Include the constitution's worked examples."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "Precision of the local model, on both sides."}
    )


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
    prompt_set = load_prompts(ws.demo_prompts)
    chosen = [prompt_set.prompts[i % len(prompt_set.prompts)] for i in range(prompts)]
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.0)
    steps_per_prompt = 1 + 2 * rounds
    tokens = prompts * steps_per_prompt * new_tokens

    begun = time.perf_counter()
    for index, prompt in enumerate(chosen):
        [answer] = backend.generate([[{"role": "user", "content": prompt.prompt}]], params)
        response = answer.text
        for round_ in range(1, rounds + 1):
            principle = choose_principle(constitution, "random", 0, prompt.id, index, round_)
            chat = critique_chat(prompt.prompt, response, principle, constitution, few_shot)
            [critique] = backend.generate([chat], params)
            [revision] = backend.generate([revision_chat(chat, critique.text, principle)], params)
            response = revision.text
    sequential_seconds = time.perf_counter() - begun

    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompts.jsonl"
        prompt_file.write_text(
            "".join(json.dumps({"id": f"p{i}", "prompt": p.prompt}) + "\n" for i, p in enumerate(chosen))
        )
        config = GenerateConfig(
            constitution=str(constitution_path),
            prompts=str(prompt_file),
            model=model,
            rounds=rounds,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            temperature=0.0,
            early_stop=False,
            few_shot=few_shot,
            dtype=dtype,
        )
        begun = time.perf_counter()
        run_generation(config, Workspace(Path(tmp)), backends=(backend, backend))
        pipeline_seconds = time.perf_counter() - begun

    # the roofline of the precision the model runs in: bf16 units are several times faster than fp32
    flops = matmul_flops_per_second(next(backend.model.parameters()).dtype) if hasattr(backend, "model") else 0.0
    parameters = sum(p.numel() for p in backend.model.parameters()) if hasattr(backend, "model") else None
    roofline = flops / (2 * parameters) if parameters else None
    pipeline_rate = tokens / pipeline_seconds
    return {
        "model": backend.name,
        "prompts": prompts,
        "rounds": rounds,
        "few_shot": few_shot,
        "dtype": str(next(backend.model.parameters()).dtype) if hasattr(backend, "model") else None,
        "generated_tokens_each": tokens,
        "sequential_tokens_per_s": round(tokens / sequential_seconds, 1),
        "pipeline_tokens_per_s": round(pipeline_rate, 1),
        "speedup": round(sequential_seconds / pipeline_seconds, 2),
        "matmul_gflops": round(flops / 1e9, 1),
        "roofline_tokens_per_s": round(roofline, 1) if roofline else None,
        "pipeline_fraction_of_roofline": round(pipeline_rate / roofline, 3) if roofline else None,
    }
