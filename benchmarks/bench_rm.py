"""Reward models on the AI judge's labels, soft-label loss against margin loss, and the RLHF baseline on people's
labels of the same pairs, each scored on held-back human-labelled hh-rlhf pairs.

    python benchmarks/bench_rm.py [--model default] [--judge hf:default] [--train-pairs 64] [--eval-pairs 128]
                                  [--max-length 192] [--lr 5e-5] [--threads N] [--label-run RUN --workspace DIR]

1. Pairs: the shared hh-rlhf file's pairs whose chat fits `--max-length` tokens on both sides (so no answer is
   cut off), ties apart, shuffled with a seed; the first `--train-pairs` are trained on, the next `--eval-pairs`
   are held back (never labelled, never trained on).
2. AI labels: the training pairs labelled by the default judge (`cai_core.jobs.run("label", ...)`, the hhh
   constitution, one sampled principle per pair, both orders); `--label-run RUN` reuses a finished label run of
   the workspace instead (its pairs that are held back here are dropped). Pairs the judge calls an exact tie
   leave the AI-labelled sets.
3. Three reward models from the same starting model, same steps (one epoch of the training pairs):
   `ai-soft` (cross-entropy against the judge's P), `ai-margin` (hard pairs with the margin |2P-1|),
   `human` (the crowdworkers' choice, hard pairs: the RLHF baseline).
4. Each one's accuracy on the held-back pairs (the crowdworkers' chosen answer scored higher), with a Wilson
   95% interval, and the paired difference soft - margin with a bootstrap 95% interval; also the judge's own
   agreement with the crowdworkers on the training pairs, since a reward model learns what its labels say.

The defaults (64 + 128 pairs of at most 192 tokens, 8 steps per model, SmolLM2-135M) are sized for about 15
minutes on a quiet 2-core CPU; at that size every model is expected at chance (README, training section).
Every run is an ordinary training run of the workspace (a fresh temporary one unless `--workspace`), so
running it again with the same workspace resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cai_core import jobs  # noqa: E402
from cai_core.feedback import LabelConfig  # noqa: E402
from cai_core.jobs import JobFolder  # noqa: E402
from cai_core.pairs import read_hh_rlhf, transcript_messages  # noqa: E402
from cai_core.stats import wilson  # noqa: E402
from cai_core.train import train  # noqa: E402
from cai_core.train.models import load_tokenizer, resolve_model  # noqa: E402
from cai_core.train.reward import RewardConfig, answer_lengths, evaluation, pair_rewards  # noqa: E402
from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402

HH_RLHF = PROJECT_ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"


def interval_95(successes: int, n: int) -> list[float] | None:
    """A proportion's Wilson 95% interval, rounded for the report; None with nothing counted."""
    estimate = wilson(successes, n)
    return [round(estimate.low, 3), round(estimate.high, 3)] if estimate else None


def fitting_pairs(data: str, tokenizer, max_length: int, wanted: int, seed: int):
    """(pairs, the crowdworkers' choice per pair id): pairs with a clear choice whose chat, with either answer,
    fits `max_length` tokens, in a seeded order."""
    found = read_hh_rlhf(data)
    human = {label.pair_id: label.choice for label in found.labels}
    pairs = [p for p in found.pairs if human.get(p.pair_id) in ("a", "b")]
    random.Random(seed).shuffle(pairs)
    kept = []
    for pair in pairs:
        chat = transcript_messages(pair.prompt)
        texts = [
            tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=False)
            for answer in (pair.response_a, pair.response_b)
        ]
        longest = max(len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids)
        if longest <= max_length:
            kept.append(pair)
            if len(kept) == wanted:
                break
    return kept, human


def preference_frame(pairs, p_a: dict[str, float]) -> pd.DataFrame:
    """TRL's conversational preference rows, the side with P(a better) = p_a[pair] above 0.5 chosen; with its
    soft label P(chosen better) and confidence |2P - 1|. Exact ties are left out."""
    rows = []
    for pair in pairs:
        p = p_a.get(pair.pair_id)
        if p is None or p == 0.5:
            continue
        a_wins = p > 0.5
        chosen, rejected = (pair.response_a, pair.response_b) if a_wins else (pair.response_b, pair.response_a)
        rows.append(
            {
                "prompt": transcript_messages(pair.prompt),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "soft_label": p if a_wins else 1 - p,
                "confidence": abs(2 * p - 1),
            }
        )
    return pd.DataFrame(rows)


def bench_workspace(folder: str | None, prefix: str) -> Workspace:
    """The runs' data folder: FOLDER, or a new temporary one named PREFIX...; unless it has models of its own, it
    uses the home workspace's, so that the converted default model is shared, not converted again."""
    ws = Workspace(Path(folder or tempfile.mkdtemp(prefix=prefix)))
    if not ws.models_dir.exists():
        ws.root.mkdir(parents=True, exist_ok=True)
        ws.models_dir.symlink_to(Workspace.from_env().models_dir.resolve(), target_is_directory=True)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="Starting model of the reward models.")
    parser.add_argument("--judge", default="hf:default", help="Judge model spec for the AI labels.")
    parser.add_argument("--data", default=str(HH_RLHF), help="An hh-rlhf file (the crowdworkers' labels).")
    parser.add_argument("--train-pairs", type=int, default=64)
    parser.add_argument("--eval-pairs", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=192, help="Tokens; longer pairs are not used.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--label-run", help="Reuse this finished label run of the workspace.")
    parser.add_argument("--workspace", help="Data folder of the runs (a new temporary one by default).")
    args = parser.parse_args()

    if not Path(args.data).exists():
        sys.exit(f"{args.data} is absent: this benchmark needs the shared hh-rlhf data")
    if args.label_run and not args.workspace:
        sys.exit("--label-run names a run of a workspace: give that --workspace too")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ws = bench_workspace(args.workspace, "bench-rm-")
    model = resolve_model(args.model, ws)
    tokenizer = load_tokenizer(model)
    began = time.perf_counter()
    pairs, human = fitting_pairs(args.data, tokenizer, args.max_length, args.train_pairs + args.eval_pairs, args.seed)
    if len(pairs) < args.train_pairs + args.eval_pairs:
        sys.exit(f"only {len(pairs)} pairs fit {args.max_length} tokens: ask for fewer or a longer --max-length")
    train_pairs, held_back = pairs[: args.train_pairs], pairs[args.train_pairs :]
    held_back_ids = {p.pair_id for p in held_back}

    if args.label_run:
        label_job = JobFolder(ws.runs_dir / args.label_run)
        by_id = {p.pair_id: p for p in pairs}
        labelled = [by_id[r["pair_id"]] for r in label_job.read("ai_labels") if r["pair_id"] in by_id]
        train_pairs = [p for p in dict.fromkeys(labelled) if p.pair_id not in held_back_ids]
        if not train_pairs:
            sys.exit(f"label run {args.label_run} labelled none of these hh-rlhf pairs outside the held-back ones")
    else:
        label_job = jobs.run(
            "label",
            LabelConfig(constitution=str(PROJECT_ROOT / "constitutions" / "hhh.yaml"), model=args.judge),
            ws,
            pairs=train_pairs,
        )
    label_seconds = time.perf_counter() - began
    ai_p = {r["pair_id"]: r["p_a"] for r in label_job.read("ai_labels")}
    human_p = {p.pair_id: 1.0 if human[p.pair_id] == "a" else 0.0 for p in train_pairs}
    judged = [p for p in train_pairs if ai_p.get(p.pair_id) not in (None, 0.5)]
    judge_agrees = sum((ai_p[p.pair_id] > 0.5) == (human[p.pair_id] == "a") for p in judged)

    folder = Path(tempfile.mkdtemp(prefix="bench-rm-data-"))
    datasets = {"ai-soft": preference_frame(train_pairs, ai_p), "human": preference_frame(train_pairs, human_p)}
    datasets["ai-margin"] = datasets["ai-soft"]
    eval_rows = [
        {
            "prompt": transcript_messages(p.prompt),
            "chosen": [{"role": "assistant", "content": p.response_a if human[p.pair_id] == "a" else p.response_b}],
            "rejected": [{"role": "assistant", "content": p.response_b if human[p.pair_id] == "a" else p.response_a}],
        }
        for p in held_back
    ]
    steps = -(-len(train_pairs) // args.batch_size)  # one epoch
    correct, results = {}, {}
    for name in ("ai-soft", "ai-margin", "human"):
        path = folder / f"{name}.jsonl"
        frame = datasets[name]
        (frame.drop(columns=["soft_label", "confidence"]) if name == "human" else frame).to_json(
            path, orient="records", lines=True, force_ascii=False
        )
        config = RewardConfig(
            model=model,
            dataset=str(path),
            loss="soft" if name == "ai-soft" else "margin",
            eval_fraction=0.0,
            max_steps=steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            max_length=args.max_length,
            save_steps=10_000,
            seed=args.seed,
        )
        start = time.perf_counter()
        job = train(config, ws)
        train_seconds = time.perf_counter() - start
        if (progress := job.progress()).status != "done":
            sys.exit(f"{name}: the reward model's run {job.run_id} ended {progress.status}: {progress.message}")
        from transformers import AutoModelForSequenceClassification

        rm = AutoModelForSequenceClassification.from_pretrained(job.path / "final", num_labels=1)
        chosen, rejected = pair_rewards(rm, tokenizer, eval_rows, args.max_length)
        scores = evaluation(chosen, rejected, answer_lengths(tokenizer, eval_rows))
        correct[name] = [c > r for c, r in zip(chosen, rejected, strict=True)]
        hits, n = sum(correct[name]), len(correct[name])
        results[name] = {
            "trained_pairs": len(frame),
            "accuracy": round(hits / n, 3),
            "accuracy_95": interval_95(hits, n),
            "ece": round(scores["ece"], 3),
            "train_seconds": round(train_seconds, 1),
            "run_id": job.run_id,
        }

    rng = random.Random(args.seed)
    n = len(held_back)
    gaps = sorted(
        sum(correct["ai-soft"][i] - correct["ai-margin"][i] for i in (rng.randrange(n) for _ in range(n))) / n
        for _ in range(2000)
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "judge": args.judge,
                "label_run": label_job.run_id,
                "max_length": args.max_length,
                "steps_per_model": steps,
                "batch_size": args.batch_size,
                "learning_rate": args.lr,
                "held_back_pairs": n,
                "judge_agreement_on_training_pairs": round(judge_agrees / len(judged), 3) if judged else None,
                "judge_agreement_95": interval_95(judge_agrees, len(judged)),
                "judge_ties": len(train_pairs) - len(judged),
                "label_seconds": round(label_seconds, 1),
                "reward_models": results,
                "soft_minus_margin": round(sum(correct["ai-soft"]) / n - sum(correct["ai-margin"]) / n, 3),
                "soft_minus_margin_95": [gaps[49], gaps[1949]],
                "total_seconds": round(time.perf_counter() - began, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
