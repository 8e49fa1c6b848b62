"""PPO episodes/s on a fixed tiny configuration, with the reward gain, and SFT tokens/s, in 1 and 2 processes.

    python benchmarks/bench_train.py [--model default] [--threads 1] [--nproc 1 2]

Fixed configuration: the tests' tiny Llama (2 layers, 64 wide), 16 prompts, PPO with 16 rollouts of 8
tokens per step, 2 epochs, 30 steps, the reward being the share of answer tokens among half the
vocabulary; SFT 20 steps of 4 conversations. With N processes each takes 1/N of every step's batch, so
the work is the same; the times include starting the processes (torchrun on a CPU, one per GPU).
`--model default` runs the same loops on SmolLM2-135M (fewer steps). Figures are printed, not asserted:
compare them only with a run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cai_core.train import train  # noqa: E402
from cai_core.train.ppo import PPOConfig  # noqa: E402
from cai_core.train.sft import SFTConfig  # noqa: E402
from cai_core.workspace import Workspace  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (built here) or any model spec, e.g. default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ws = Workspace(tmp / "data")
    model = str(build_tiny_model(tmp / "tiny")) if args.model == "tiny" else args.model
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
    results = []
    for nproc in args.nproc:
        config = PPOConfig(
            model=model,
            dataset=str(prompts),
            reward_model="tests.train_rewards:low_ids",
            max_steps=steps,
            batch_size=batch // nproc,
            learning_rate=3e-3 if tiny else 1e-5,
            ppo_epochs=2,
            max_new_tokens=8 if tiny else 32,
            temperature=1.0,
            save_steps=10_000,
            nproc=nproc,
        )
        start = time.perf_counter()
        job = train(config, ws)
        ppo_seconds = time.perf_counter() - start
        rows = [r for r in job.read("train_metrics") if r["name"] == "reward"]
        rewards = [r["value"] for r in sorted(rows, key=lambda r: r["step"])]
        window = max(1, len(rewards) // 6)

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
                "reward_first": round(sum(rewards[:window]) / window, 3),
                "reward_last": round(sum(rewards[-window:]) / window, 3),
                "sft_tokens": int(tokens),
                "sft_seconds_incl_start": round(sft_seconds, 2),
                "sft_tokens_per_s": round(tokens / sft_seconds, 1),
            }
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
