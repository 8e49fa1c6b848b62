"""Time every agreement-dashboard figure over 1,000,000 AI labels (and as many human labels), in DuckDB,
against the same figures computed with pandas in the same run.

    python benchmarks/bench_agreement.py [--pairs 500000]

Synthetic data: PAIRS pairs, two judge runs (two models, two constitution versions, one principle
sampled per pair out of five) so AI labels = 2 x PAIRS, and two annotators per pair so human labels =
2 x PAIRS, with ties, both-bad and skips among them. The pandas baseline computes the by-run table,
the confusion matrix, the reliability bins and Krippendorff's alpha, and the two are checked to agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai_core.agreement import cohen_kappa, dashboard  # noqa: E402
from cai_core.store import Store  # noqa: E402


def synthetic(pairs: int, seed: int = 0) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = np.char.add("p-", np.arange(pairs).astype(str))
    truth = rng.random(pairs)  # how much better response a really is
    pair_table = pa.table(
        {
            "pair_id": ids,
            "prompt": np.full(pairs, "prompt"),
            "response_a": np.full(pairs, "a"),
            "response_b": np.full(pairs, "b"),
            "source": np.full(pairs, "import"),
            "origin": np.full(pairs, "synthetic"),
            "origin_index": np.arange(pairs, dtype=np.int32),
            "origin_a": np.full(pairs, "a"),
            "origin_b": np.full(pairs, "b"),
            "created_at": np.zeros(pairs),
        }
    )
    ai = []
    for run, (model, version) in enumerate([("judge-1", "v1"), ("judge-2", "v2")]):
        bias = rng.normal(0.05 * run, 0.1, pairs)
        p1 = np.clip(truth + rng.normal(0, 0.2, pairs) + bias, 0.001, 0.999)
        p2 = np.clip(1 - truth + rng.normal(0, 0.2, pairs) + bias, 0.001, 0.999)
        ai.append(
            pd.DataFrame(
                {
                    "run_id": f"run-{run}",
                    "pair_id": ids,
                    "principle_id": np.array(["harm", "honesty", "privacy", "fairness", "legality"])[
                        rng.integers(0, 5, pairs)
                    ],
                    "judge_model": model,
                    "constitution_version": version,
                    "strategy": "sample",
                    "method": "logprob",
                    "cot": False,
                    "few_shot": 0,
                    "p_order1": p1,
                    "p_order2": p2,
                    "p_a": (p1 + 1 - p2) / 2,
                    "failed": False,
                    "reasoning_1": None,
                    "reasoning_2": None,
                    "seconds": 0.01,
                    "created_at": 0.0,
                }
            )
        )
    humans = []
    for annotator in ("ann", "bo"):
        draw = rng.random(pairs)
        choice = np.where(draw < truth * 0.85, "a", "b")
        odd = rng.random(pairs)
        choice = np.where(odd < 0.05, "tie", np.where(odd < 0.08, "both_bad", np.where(odd < 0.1, "skip", choice)))
        humans.append(
            pd.DataFrame(
                {
                    "pair_id": ids,
                    "annotator": annotator,
                    "choice": choice,
                    "shown_swapped": False,
                    "rationale": "",
                    "created_at": 0.0,
                    "updated_at": 0.0,
                }
            )
        )
    return {
        "pairs": pair_table,
        "ai_labels": pa.Table.from_pandas(pd.concat(ai), preserve_index=False),
        "human_labels": pa.Table.from_pandas(pd.concat(humans), preserve_index=False),
    }


def pandas_figures(ai: pd.DataFrame, human: pd.DataFrame, tie_band: float = 0.05, bins: int = 10) -> dict:
    """The same figures the dashboard shows, the way one would write them in pandas."""
    human = human[human.choice != "skip"].assign(h=lambda d: d.choice.replace({"both_bad": "tie"}))
    joined = ai.merge(human[["pair_id", "h"]], on="pair_id")
    joined["v3"] = np.where(joined.p_a > 0.5 + tie_band, "a", np.where(joined.p_a < 0.5 - tie_band, "b", "tie"))
    joined["v2"] = np.where(joined.p_a > 0.5, "a", "b")
    binary = joined[joined.h.isin(["a", "b"]) & (joined.p_a != 0.5)]
    tables = {}
    for key in ("run_id", "judge_model", "constitution_version", "principle_id"):
        rows = {}
        for value, group in binary.groupby(key):
            confusion = pd.crosstab(group.h, group.v2)
            rows[value] = {
                "agreement": (group.h == group.v2).mean(),
                "kappa": cohen_kappa(confusion.reindex(index=["a", "b"], columns=["a", "b"], fill_value=0)),
            }
        for value, group in joined.groupby(key):
            rows[value]["agreement_with_ties"] = (group.h == group.v3).mean()
        for value, group in ai.groupby(key):
            first1, first2 = group.p_order1 > 0.5, group.p_order2 > 0.5
            rows[value]["position_consistency"] = (first1 != first2).mean()
            rows[value]["first_position_rate"] = (first1.mean() + first2.mean()) / 2
        tables[key] = pd.DataFrame(rows).T
    confusion = pd.crosstab(joined.h, joined.v3)
    outcomes = joined[joined.h.isin(["a", "b"])]  # a prediction of exactly 0.5 is still a prediction here
    calib = outcomes.assign(bin=np.minimum((outcomes.p_a * bins).astype(int), bins - 1), y=outcomes.h == "a")
    reliability = calib.groupby("bin").agg(n=("y", "size"), mean_p=("p_a", "mean"), frac_a=("y", "mean"))
    ece = float((reliability.n / reliability.n.sum() * (reliability.mean_p - reliability.frac_a).abs()).sum())
    counts = human.groupby(["pair_id", "h"]).size().rename("n_uc").reset_index()
    counts["m_u"] = counts.groupby("pair_id").n_uc.transform("sum")
    counts = counts[counts.m_u >= 2]
    n_c = counts.groupby("h").n_uc.sum()
    o_cc = (counts.n_uc * (counts.n_uc - 1) / (counts.m_u - 1)).groupby(counts.h).sum()
    n = n_c.sum()
    alpha = 1 - (n - 1) * (n - o_cc.sum()) / (n * n - (n_c**2).sum())
    disagreements = binary[binary.h != binary.v2].assign(conf=lambda d: (d.p_a - 0.5).abs()).nlargest(50, "conf")
    return {"tables": tables, "confusion": confusion, "ece": ece, "alpha": alpha, "disagreements": disagreements}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500_000, help="Pairs; AI labels and human labels are 2x this.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats; the best is reported.")
    args = parser.parse_args()

    data = synthetic(args.pairs)
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "bench.duckdb") as store:
        for table, arrow in data.items():
            store.con.register("incoming", arrow)
            store.con.execute(f"INSERT INTO {table} SELECT * FROM incoming")
            store.con.unregister("incoming")
        ai_rows = store.con.execute("SELECT count(*) FROM ai_labels").fetchall()[0][0]
        human_rows = store.con.execute("SELECT count(*) FROM human_labels").fetchall()[0][0]

        duck_seconds = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            board = dashboard(store)
            duck_seconds.append(time.perf_counter() - began)

    ai, human = data["ai_labels"].to_pandas(), data["human_labels"].to_pandas()
    pandas_seconds = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        figures = pandas_figures(ai, human)
        pandas_seconds.append(time.perf_counter() - began)

    by_run = board.by_run.set_index("run_id")
    expected = figures["tables"]["run_id"]
    checks = {
        "agreement": np.allclose(by_run.agreement, expected.agreement.astype(float)),
        "kappa": np.allclose(by_run.kappa, expected.kappa.astype(float)),
        "agreement_with_ties": np.allclose(by_run.agreement_with_ties, expected.agreement_with_ties.astype(float)),
        "position_consistency": np.allclose(by_run.position_consistency, expected.position_consistency.astype(float)),
        "per_principle": np.allclose(
            board.by_principle.set_index("principle_id").agreement, figures["tables"]["principle_id"].agreement
        ),
        "ece": np.isclose(board.reliability.ece, figures["ece"]),
        "alpha": np.isclose(board.alpha.alpha, figures["alpha"]),
        "confusion": (board.confusion.to_numpy() == figures["confusion"].to_numpy()).all(),
        "disagreements": np.allclose(
            (board.disagreements.p_a - 0.5).abs().to_numpy(), figures["disagreements"].conf.to_numpy()
        ),
    }
    best_duck, best_pandas = min(duck_seconds), min(pandas_seconds)
    print(f"AI labels {ai_rows:,}, human labels {human_rows:,}, pairs {args.pairs:,}")
    print(f"duckdb dashboard (every figure): {best_duck:.3f} s (best of {args.repeats})")
    print(f"pandas baseline (same figures):  {best_pandas:.3f} s (best of {args.repeats})")
    print(f"ratio pandas / duckdb: {best_pandas / best_duck:.1f}x")
    print("figures agree: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in checks.items()))
    print(board.by_run.to_string(index=False))


if __name__ == "__main__":
    main()
