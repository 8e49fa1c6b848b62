"""PPO episodes/s on a fixed tiny configuration, with the reward gain, and SFT tokens/s, in 1 and 2 processes;
or, with `--rollouts`, PPO and GRPO with their rollouts sampled by transformers against vLLM.

    python benchmarks/bench_train.py [--model default] [--threads 1] [--nproc 1 2] [--trl-python PATH]
    python benchmarks/bench_train.py --rollouts [--model default] [--steps 4]

`--rollouts`: PPO and GRPO, each on rollout engine hf then vllm, same config and seed, one process, in one run.
For each: episodes/s over the whole run (vLLM's engine start-up included) and over the steps after the first
(from the times the steps were logged), the share of a step spent sampling rollouts (PPO logs it; for GRPO
TRL's `_generate` is timed here, which includes handing vLLM the new weights), and the load average (1 min)
before and after, since figures on a shared machine move with it. `--model tiny` builds a tiny model with one
64-wide head (vLLM's CPU attention refuses narrower ones).

Fixed configuration: the tests' tiny Llama (2 layers, 64 wide), 16 prompts, PPO with 16 rollouts of 8
tokens per step, 2 epochs, 30 steps, the reward being the share of answer tokens among half the
vocabulary; SFT 20 steps of 4 conversations. With N processes each takes 1/N of every step's batch, so
the work is the same; the times include starting the processes (torchrun on a CPU, one per GPU).
`--model default` runs the same loops on SmolLM2-135M (fewer steps). Figures are printed, not asserted:
compare them only with a run on the same machine.

`--trl-python PATH` also puts our PPO against TRL 1.12's experimental PPOTrainer (TRL removed it in 1.13, so it
is not a project dependency: PATH is a Python that has it, e.g. `python -m venv /tmp/trl112 &&
/tmp/trl112/bin/pip install torch==2.13.0 "trl==1.12.*"`), one process each, same policy, prompts and settings.
TRL's PPOTrainer takes a reward model, not a function, so both sides of this comparison score with the same
reward model: the policy's weights under a seeded random one-output head (`benchmarks/trl_ppo.py` is TRL's
side, run in that Python). Each side runs twice, in the order ours, TRL, TRL, ours, so that a load drifting
on a shared machine weighs on both alike; times include starting the process on both sides. The reward
model reads different text on each side: ours the conversation in the chat template (as our reward models
are trained), TRL the prompt and answer tokens as generated; so compare the gains, not the reward levels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cai_core.train import train  # noqa: E402
from cai_core.train.grpo import GRPOConfig  # noqa: E402
from cai_core.train.models import resolve_model  # noqa: E402
from cai_core.train.ppo import PPOConfig  # noqa: E402
from cai_core.train.sft import SFTConfig  # noqa: E402
from cai_core.workspace import Workspace  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (built here) or any model spec, e.g. default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--trl-python", help="a Python with TRL 1.12, to run its PPOTrainer beside ours")
    parser.add_argument("--rollouts", action="store_true", help="PPO and GRPO with rollouts on hf against vllm")
    parser.add_argument("--steps", type=int, default=4, help="steps of each --rollouts run")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ws = Workspace(tmp / "data")
    if args.rollouts:
        bench_rollouts(args.model, args.steps, tmp, ws)
        return
    # a folder, which TRL's side can load too (and the default model is not converted again)
    model = (
        str(build_tiny_model(tmp / "tiny")) if args.model == "tiny" else resolve_model(args.model, Workspace.from_env())
    )
    tiny = args.model == "tiny"
    prompts = tmp / "prompts.jsonl"
    pd.DataFrame({"prompt": [f"How do I bake bread {i}?" for i in range(16)]}).to_json(
        prompts, orient="records", lines=True
    )
    answer = "Mix flour, water, salt and yeast, knead, rest and bake. " * 3
    sft = tmp / "sft.jsonl"
    pd.DataFrame(
        {
            "messages": [
                [{"role": "user", "content": f"Bread {i}?"}, {"role": "assistant", "content": answer}]
                for i in range(32)
            ]
        }
    ).to_json(sft, orient="records", lines=True)

    steps, batch = (30, 16) if tiny else (6, 8)
    sft_steps = 20 if tiny else 5
    ppo = {
        "max_steps": steps,
        "learning_rate": 3e-3 if tiny else 1e-5,
        "ppo_epochs": 2,
        "max_new_tokens": 8 if tiny else 32,
        "temperature": 1.0,
        "kl_coef": 0.05,
        "seed": 0,
    }

    def our_ppo(reward_model: str, nproc: int, run_id: str | None = None) -> tuple[float, list[float]]:
        config = PPOConfig(
            model=model,
            dataset=str(prompts),
            reward_model=reward_model,
            batch_size=batch // nproc,
            save_steps=10_000,
            nproc=nproc,
            run_id=run_id,  # a second run of one config needs its own id, or it would find the first one done
            **ppo,
        )
        start = time.perf_counter()
        job = train(config, ws)
        seconds = time.perf_counter() - start
        rows = sorted((r for r in job.read("train_metrics") if r["name"] == "reward"), key=lambda r: r["step"])
        return seconds, [r["value"] for r in rows]

    results = []
    for nproc in args.nproc:
        ppo_seconds, rewards = our_ppo("tests.train_rewards:low_ids", nproc)
        start = time.perf_counter()
        sft_config = SFTConfig(
            model=model, dataset=str(sft), max_steps=sft_steps, batch_size=4 // nproc, save_steps=10_000, nproc=nproc
        )
        sft_job = train(sft_config, ws)
        sft_seconds = time.perf_counter() - start
        tokens = max(r["value"] for r in sft_job.read("train_metrics") if r["name"] == "num_tokens")
        results.append(
            {
                "model": args.model,
                "nproc": nproc,
                "torch_threads": torch.get_num_threads(),
                "ppo_episodes": steps * batch,
                "ppo_seconds_incl_start": round(ppo_seconds, 2),
                "ppo_episodes_per_s": round(steps * batch / ppo_seconds, 2),
                **reward_gain(rewards),
                "sft_tokens": int(tokens),
                "sft_seconds_incl_start": round(sft_seconds, 2),
                "sft_tokens_per_s": round(tokens / sft_seconds, 1),
            }
        )
    print(json.dumps(results, indent=1))
    if not args.trl_python:
        print("TRL 1.12's PPOTrainer: skipped (give --trl-python, a Python that has TRL 1.12)")
        return

    reward_model = build_reward_model(model, tmp / "reward")
    spec = tmp / "trl-spec.json"
    spec.write_text(
        json.dumps(
            {
                **ppo,
                "model": model,
                "reward_model": str(reward_model),
                "prompts": list(pd.read_json(prompts, lines=True).prompt),
                "steps": steps,
                "batch_size": batch,
                "threads": args.threads,
            }
        ),
        encoding="utf-8",
    )

    def trl_ppo() -> tuple[float, list[float], dict]:
        start = time.perf_counter()
        side = subprocess.run(
            [args.trl_python, str(Path(__file__).with_name("trl_ppo.py")), str(spec)], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if side.returncode:
            sys.exit(f"TRL's side failed ({args.trl_python}):\n{side.stderr[-3000:]}")
        result = json.loads(side.stdout.strip().splitlines()[-1])
        return seconds, result["rewards"], result

    # ours, TRL, TRL, ours: a load that drifts during the run weighs on both sides alike
    ours = [our_ppo(str(reward_model), 1, run_id="ppo-vs-trl-1")]
    trl = [trl_ppo(), trl_ppo()]
    ours.append(our_ppo(str(reward_model), 1, run_id="ppo-vs-trl-2"))
    sides = {"ours": ours, f"trl {trl[0][2]['trl']} PPOTrainer": [run[:2] for run in trl]}
    print(
        json.dumps(
            {
                "model": args.model,
                "reward": "the policy's weights under a seeded random one-output head",
                "episodes": steps * batch,
                **{
                    side: {
                        "seconds_incl_start": [round(seconds, 1) for seconds, _ in runs],
                        "episodes_per_s": round(2 * steps * batch / sum(seconds for seconds, _ in runs), 2),
                        "steps_logged": len(runs[0][1]),
                        **reward_gain(runs[0][1]),
                    }
                    for side, runs in sides.items()
                },
                "trl_train_seconds": [round(run[2]["train_seconds"], 1) for run in trl],
            },
            indent=1,
        )
    )


def bench_rollouts(model_spec: str, steps: int, tmp: Path, ws: Workspace) -> None:
    from trl import GRPOTrainer

    model = (
        str(build_tiny_model(tmp / "tiny", head_dim=64))
        if model_spec == "tiny"
        else resolve_model(model_spec, Workspace.from_env())
    )
    prompts = tmp / "prompts.jsonl"
    questions = ["How do I bake bread?", "What is the capital of France?", "Write a haiku about the sea."]
    pd.DataFrame({"prompt": [f"{q} ({i})" for i in range(16) for q in questions]}).to_json(
        prompts, orient="records", lines=True
    )
    common = {
        "model": model,
        "dataset": str(prompts),
        "reward_model": "tests.train_rewards:low_ids",
        "max_steps": steps,
        "batch_size": 8,
        "max_new_tokens": 32,
        "temperature": 1.0,
        "learning_rate": 1e-5,
        "seed": 0,
        "save_steps": 10_000,
    }
    configs = {"ppo": (PPOConfig, {}), "grpo": (GRPOConfig, {"num_generations": 4})}

    # GRPO's rollout time: TRL logs none, so its generation method is timed from outside (this script only)
    generating = {"seconds": 0.0}
    generate = GRPOTrainer._generate

    def timed_generate(self, *a, **kw):
        began = time.perf_counter()
        try:
            return generate(self, *a, **kw)
        finally:
            generating["seconds"] += time.perf_counter() - began

    GRPOTrainer._generate = timed_generate
    results = []
    for kind, (config_type, extra) in configs.items():
        for engine in ("hf", "vllm"):
            generating["seconds"] = 0.0
            load_before = os.getloadavg()[0]
            config = config_type(**common, **extra, rollout_engine=engine, run_id=f"bench-{kind}-{engine}")
            began = time.perf_counter()
            job = train(config, ws)
            seconds = time.perf_counter() - began
            metrics = job.read("train_metrics")
            logged = sorted({r["step"]: r["created_at"] for r in metrics}.items())
            steady = logged[-1][1] - logged[0][1] if len(logged) > 1 else float("nan")
            shares = [r["value"] for r in metrics if r["name"] == "rollout_share"]
            results.append(
                {
                    "algorithm": kind,
                    "rollouts": engine,
                    "status": job.progress().status,
                    "episodes": steps * 8,
                    "seconds_incl_start": round(seconds, 1),
                    "episodes_per_s": round(steps * 8 / seconds, 3),
                    "episodes_per_s_after_step_1": round((len(logged) - 1) * 8 / steady, 3),
                    "rollout_share": round(sum(shares) / len(shares), 3)
                    if shares
                    else round(generating["seconds"] / seconds, 3),
                    "load_before": round(load_before, 1),
                    "load_after": round(os.getloadavg()[0], 1),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"model": model_spec, "steps": steps, "runs": results}, indent=1))


def reward_gain(rewards: list[float]) -> dict[str, float]:
    """Mean reward of the first and of the last sixth of the steps."""
    window = max(1, len(rewards) // 6)
    return {
        "reward_first": round(sum(rewards[:window]) / window, 3),
        "reward_last": round(sum(rewards[-window:]) / window, 3),
    }


def build_reward_model(model: str, path: Path) -> Path:
    """A reward model both PPOs can load: `model`'s weights under a seeded random one-output head, scaled so
    that rewards spread over about one unit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    with torch.no_grad():
        reward.score.weight.normal_(std=reward.config.hidden_size**-0.5)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    main()
