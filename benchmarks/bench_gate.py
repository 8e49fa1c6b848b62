"""The label gate on data where the truth is known: a judge with known per-principle reliability labels hh-rlhf
pairs, the gate must find its bad principles, and a reward model on the gated labels must beat one on the ungated
labels on held-back pairs that people labelled.

    python benchmarks/bench_gate.py [--model words] [--people 2 --coin 2 --contrary 2] [--audit-pairs 60]
                                    [--train-pairs 600] [--held-back-pairs 300] [--max-length 384] [--epochs 1]

1. Pairs: the shared hh-rlhf file's pairs whose chat fits `--max-length` tokens on both sides, ties apart, in a
   seeded order, cut into three: an audit sample (stored with the crowdworkers' choice as people's labels: what
   the gate judges the principles by, and kept out of training by the reward model as always), the training pairs
   (stored without a person's label) and the held-back pairs (never stored, never labelled, never trained on).
2. The judge (`tests/known_truth_judge.py`) on a loopback OpenAI-compatible server: principles of the hhh
   constitution, drawn by a seeded shuffle, answer as people did (`--people`), by a coin (`--coin`) or the other
   way round (`--contrary`), as sure of itself either way. The real label job labels the audit and training
   pairs through the `openai:` backend, every principle on every pair (`ensemble`), both orders.
3. The real gate (`label_gate.gate`, the default rule) decides per principle from the audit sample.
4. Two reward models from the same starting model, the same steps: on the gated labels and on the ungated ones
   (`gate: false`), each an ordinary `cai train rm` run on the store.
5. Each one's accuracy on the held-back pairs (people's chosen answer scored higher), with a Wilson 95% interval,
   and the paired difference gated - ungated with a bootstrap 95% interval (`cai_core.stats`).

Prints one JSON object. Every run is an ordinary run of a fresh temporary workspace (or `--workspace`).

The default reward model is `words`, a tiny Llama trained from scratch, not SmolLM2-135M: on the shared 2-core
CPU two 135M reward models on a few hundred pairs take far longer than 15 minutes (`bench_rm.py`'s three on 64
pairs took 56 minutes under load), and on 64 pairs every model is at chance. A bag of words on these hh-rlhf
pairs reaches about 0.57 on held-out pairs from 700 training pairs, so that is roughly the ceiling here; every
principle labels every pair (`ensemble`) so that the gate can judge each from one small audit sample and the
gated model keeps all the training pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_rm import HH_RLHF, bench_workspace, fitting_pairs  # noqa: E402
from cai_core import jobs  # noqa: E402
from cai_core.constitution import load_constitution  # noqa: E402
from cai_core.feedback import LabelConfig  # noqa: E402
from cai_core.label_gate import gate  # noqa: E402
from cai_core.pairs import HH_RLHF_ANNOTATOR, transcript_messages  # noqa: E402
from cai_core.records import HumanLabel  # noqa: E402
from cai_core.stats import bootstrap_interval, wilson  # noqa: E402
from cai_core.store import Store  # noqa: E402
from cai_core.train import train  # noqa: E402
from cai_core.train.models import load_tokenizer, resolve_model  # noqa: E402
from cai_core.train.reward import RewardConfig, pair_rewards  # noqa: E402
from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402
from tests.known_truth_judge import KnownTruthJudge, known_truth_server  # noqa: E402

CONSTITUTION = PROJECT_ROOT / "constitutions" / "hhh.yaml"


def word_model(path: Path, data: str, seed: int = 0) -> str:
    """A tiny Llama (2 layers, 64 wide, random weights) whose tokenizer is trained on the data's own text (no labels
    read): a reward model small enough to train for several epochs on a loaded CPU, reading whole words."""
    from cai_core.pairs import read_hh_rlhf
    from tests.tiny_model import build_tiny_model

    texts = [text for p in read_hh_rlhf(data).pairs for text in (p.prompt, p.response_a, p.response_b)]
    return str(build_tiny_model(path, seed=seed, corpus=texts, vocab_size=4000))


def known_truth_constitution(path: Path, people: int, coin: int, contrary: int, seed: int) -> dict[str, str]:
    """Write the hhh constitution cut to `people + coin + contrary` of its principles, drawn by a seeded shuffle
    (every principle costs the judge two requests per pair), to `path`; returns each one's known behaviour."""
    import yaml

    spec = yaml.safe_load(CONSTITUTION.read_text())
    enabled = [p for p in spec["principles"] if p.get("enabled", True)]
    wanted = people + coin + contrary
    if not 0 < wanted <= len(enabled):
        raise SystemExit(f"--people, --coin and --contrary add up to {wanted}: hhh has {len(enabled)} principles")
    chosen = random.Random(seed).sample(enabled, wanted)
    path.write_text(yaml.safe_dump({**spec, "principles": chosen}, sort_keys=False))
    kinds = ["people"] * people + ["coin"] * coin + ["contrary"] * contrary
    return {p["id"]: kind for p, kind in zip(chosen, kinds, strict=True)}


def held_back_rows(pairs, people: dict[str, str]) -> list[dict]:
    """The held-back pairs as preference rows, people's chosen answer as `chosen`."""
    rows = []
    for pair in pairs:
        chosen, rejected = (
            (pair.response_a, pair.response_b) if people[pair.pair_id] == "a" else (pair.response_b, pair.response_a)
        )
        rows.append(
            {
                "prompt": transcript_messages(pair.prompt),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


def known_truth(
    ws: Workspace,
    model: str,
    *,
    people: int = 2,
    coin: int = 2,
    contrary: int = 2,
    audit_pairs: int = 60,
    train_pairs: int = 600,
    held_back_pairs: int = 300,
    max_length: int = 384,
    epochs: int = 1,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    data: str = str(HH_RLHF),
) -> dict:
    """The whole known-truth run in workspace `ws` (see the module's text); returns its figures."""
    began = time.perf_counter()
    tokenizer = load_tokenizer(model)
    wanted = audit_pairs + train_pairs + held_back_pairs
    pairs, choice = fitting_pairs(data, tokenizer, max_length, wanted, seed)
    if len(pairs) < wanted:
        raise SystemExit(f"only {len(pairs)} pairs fit {max_length} tokens: ask for fewer or a longer --max-length")
    audit, training, held_back = pairs[:audit_pairs], pairs[audit_pairs:-held_back_pairs], pairs[-held_back_pairs:]
    with Store.open(ws) as store:
        store.add_pairs(audit + training)
        store.import_human_labels([HumanLabel(p.pair_id, HH_RLHF_ANNOTATOR, choice[p.pair_id]) for p in audit])

    constitution = ws.root / "known-truth.yaml"
    behaviour = known_truth_constitution(constitution, people, coin, contrary, seed)
    judge = KnownTruthJudge(load_constitution(constitution), behaviour, audit + training, choice, seed=seed)
    with known_truth_server(judge) as spec:
        config = LabelConfig(
            constitution=str(constitution), model=spec, strategy="ensemble", run_id="known-truth", tracker="none"
        )
        label_job = jobs.run("label", config, ws, pairs=audit + training)
    if (progress := label_job.progress()).status != "done":
        raise SystemExit(f"the label run ended {progress.status}: {progress.message}")
    label_seconds = time.perf_counter() - began

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        decided = gate(store, label_job.run_id).table
        ungated_p = store.pair_preferences(run_id=label_job.run_id)
    decided["behaviour"] = decided.principle_id.map(behaviour)
    training_ids = {p.pair_id for p in training}
    ungated_p = ungated_p[ungated_p.pair_id.isin(training_ids) & (ungated_p.p != 0.5)]
    ungated_agrees = sum((p > 0.5) == (choice[i] == "a") for i, p in zip(ungated_p.pair_id, ungated_p.p, strict=True))

    rows = held_back_rows(held_back, choice)
    people_chose = {p.response_a if choice[p.pair_id] == "a" else p.response_b for p in training}
    steps = epochs * -(-len(training) // batch_size)
    correct, models = {}, {}
    for name, gated in (("gated", True), ("ungated", False)):
        rm_config = RewardConfig(
            model=model,
            labels=label_job.run_id,
            gate=gated,
            eval_fraction=0.0,
            max_steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            save_steps=10_000,
            seed=seed,
            run_id=f"rm-{name}",
            tracker="none",
        )
        start = time.perf_counter()
        job = train(rm_config, ws)
        if (progress := job.progress()).status != "done":
            raise SystemExit(f"{name}: the reward model's run {job.run_id} ended {progress.status}: {progress.message}")
        from transformers import AutoModelForSequenceClassification

        rm = AutoModelForSequenceClassification.from_pretrained(job.path / "final", num_labels=1)
        chosen, rejected = pair_rewards(rm, tokenizer, rows, max_length)
        correct[name] = [float(c > r) for c, r in zip(chosen, rejected, strict=True)]
        estimate = wilson(sum(correct[name]), len(correct[name]))
        trained_on = pd.read_json(job.path / "data-train.jsonl", lines=True)
        agrees = sum(turns[0]["content"] in people_chose for turns in trained_on.chosen)
        models[name] = {
            "trained_pairs": len(trained_on),
            "trained_labels_agree_with_people": round(agrees / len(trained_on), 3),
            "accuracy": round(estimate.value, 3),
            "accuracy_95": [round(estimate.low, 3), round(estimate.high, 3)],
            "seconds": round(time.perf_counter() - start, 1),
        }
    gap = [g - u for g, u in zip(correct["gated"], correct["ungated"], strict=True)]
    low, high = bootstrap_interval(gap, seed=seed)
    agreement = wilson(ungated_agrees, len(ungated_p))
    return {
        "model": model,
        "pairs": {"audit": len(audit), "training": len(training), "held_back": len(held_back)},
        "max_length": max_length,
        "steps_per_model": steps,
        "gate": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
            for row in decided[["principle_id", "behaviour", "decision", "weight", "agreement", "low", "high"]]
            .sort_values(["behaviour", "principle_id"])
            .to_dict("records")
        ],
        "ungated_labels_agree_with_people": round(agreement.value, 3),
        "ungated_labels_agree_95": [round(agreement.low, 3), round(agreement.high, 3)],
        "reward_models": models,
        "gated_minus_ungated": round(sum(gap) / len(gap), 3),
        "gated_minus_ungated_95": [round(low, 3), round(high, 3)],
        "label_seconds": round(label_seconds, 1),
        "total_seconds": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="words",
        help="Starting model of both reward models; words: a tiny Llama with a tokenizer trained on the data's text.",
    )
    parser.add_argument("--data", default=str(HH_RLHF), help="An hh-rlhf file (the crowdworkers' labels).")
    for name, default in (("people", 2), ("coin", 2), ("contrary", 2)):
        parser.add_argument(f"--{name}", type=int, default=default, help=f"Principles answering by {name}.")
    for name, default in (("audit-pairs", 60), ("train-pairs", 600), ("held-back-pairs", 300)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--max-length", type=int, default=384, help="Tokens; longer pairs are not used.")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workspace", help="Data folder of the runs (a new temporary one by default).")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data} is absent: this benchmark needs the shared hh-rlhf data")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ws = bench_workspace(args.workspace, "bench-gate-")
    model = word_model(ws.root / "words-model", args.data, args.seed) if args.model == "words" else args.model
    result = known_truth(
        ws,
        resolve_model(model, ws),
        people=args.people,
        coin=args.coin,
        contrary=args.contrary,
        audit_pairs=args.audit_pairs,
        train_pairs=args.train_pairs,
        held_back_pairs=args.held_back_pairs,
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        data=args.data,
    )
    print(json.dumps({**result, "load_average": [round(x, 2) for x in os.getloadavg()]}, indent=1))


if __name__ == "__main__":
    main()
