"""AI labelling speed and agreement: the soft-label judge against a labeller in the style of the original
reference code, on the same model and the same hh-rlhf pairs, measured in the same run.

    python benchmarks/bench_label.py [--model default] [--pairs 32] [--new-tokens 256] [--dtype bfloat16]
                                     [--engines hf,vllm,service] [--no-reference]

- judge: `cai_core.feedback.Judge`, both orders of every pair in one batched scoring pass, P(A) read
  from the option log-probabilities (no text generated).
- reference: one pair at a time, the model writes up to NEW_TOKENS tokens answering "A or B, and
  why" (one order, as the reference code asked), and the letter is read out of that text.

Prints pairs per second of both and their ratio, each one's agreement with the crowdworkers' labels
on the same pairs, and how often the reference's answer could not be read at all. With `--engines hf,vllm`
the judge also runs on vLLM over the same pairs: its pairs per second, the ratio to the transformers judge,
and the largest gap between the two engines' P(A); `service` runs it on the workbench's vLLM server (started
first when none runs, outside the timing, and stopped at the end if this run started it). Each pair is two
labels (both orders).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai_core.backends import DTYPES, SamplingParams, load_backend  # noqa: E402
from cai_core.constitution import load_constitution  # noqa: E402
from cai_core.feedback import Judge, choose_principle, comparison_chat  # noqa: E402
from cai_core.pairs import read_hh_rlhf  # noqa: E402
from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402

HH_RLHF = PROJECT_ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"
REFERENCE_INSTRUCTION = "Which is better, A or B? Give the letter of the better response, then explain why."


def read_letter(text: str) -> str | None:
    """The reference style's answer: "(A)", "Answer: B", "Response A is ..." or a leading letter; the first
    such mention wins. None when the text names neither option."""
    for pattern in (
        r"\(([AB])\)",
        r"\b(?:answer|option|response)\s*(?:is\s*)?:?\s*\(?([AB])\b",
        r"^\s*([AB])\b",
    ):
        match = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
        if match:
            return match.group(1).upper()
    return None


def load() -> float:
    return round(os.getloadavg()[0], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256, help="Most tokens the reference style writes.")
    parser.add_argument("--data", default=str(HH_RLHF), help="An hh-rlhf file (the crowdworkers' labels).")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="Precision of the model, on both sides.")
    parser.add_argument(
        "--engines", default="hf", help="Engines to run the judge on, comma-separated: hf,vllm,service."
    )
    parser.add_argument("--no-reference", action="store_true", help="Time the judge only (the reference is slow).")
    args = parser.parse_args()

    if not Path(args.data).exists():
        sys.exit(f"{args.data} is absent: this benchmark needs the shared hh-rlhf data")
    found = read_hh_rlhf(args.data, limit=args.pairs)
    human = {label.pair_id: label.choice for label in found.labels}
    backend = load_backend(f"hf:{args.model}", Workspace.from_env(), dtype=args.dtype)
    constitution = load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    items = [(pair, choose_principle(constitution, 0, pair.pair_id)) for pair in found.pairs]

    def run_judge(judge_backend=backend) -> tuple[list, float]:
        began = time.perf_counter()
        verdicts = Judge(judge_backend, constitution).label(items)
        return verdicts, time.perf_counter() - began

    Judge(backend, constitution).label(items[:2])  # warm-up, so neither side pays for first-call set-up
    load_before = load()
    verdicts, judge_before = run_judge()
    engines = {"load_before_hf": load_before, "load_after_hf": load()}
    for engine in [e for e in args.engines.split(",") if e != "hf"]:
        other = load_backend(f"{engine}:{args.model}", Workspace.from_env(), dtype=args.dtype)
        Judge(other, constitution).label(items[:2])
        engines[f"load_before_{engine}"] = load()
        other_verdicts, other_seconds = run_judge(other)
        engines |= {
            f"{engine}_judge_pairs_per_s": round(len(items) / other_seconds, 3),
            f"{engine}_vs_hf_judge": round(judge_before / other_seconds, 2),
            f"largest_p_a_gap_hf_{engine}": round(
                max(abs(a.p_a - b.p_a) for a, b in zip(verdicts, other_verdicts, strict=True)), 4
            ),
            f"load_after_{engine}": load(),
        }
    n = len(items)
    result = {"model": backend.name, "dtype": args.dtype, "pairs": n, **engines}
    if args.no_reference:
        print(json.dumps({**result, "hf_judge_pairs_per_s": round(n / judge_before, 3)}, indent=1))
        return

    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    began = time.perf_counter()
    replies = []
    for pair, principle in items:
        chat = comparison_chat(
            principle, pair.prompt, pair.response_a, pair.response_b, instruction=REFERENCE_INSTRUCTION
        )
        [reply] = backend.generate([chat], params)
        replies.append(reply)
    reference_seconds = time.perf_counter() - began
    # Timed on both sides of the long reference run, so that a load change on a shared machine shows.
    _, judge_after = run_judge()
    judge_seconds = (judge_before + judge_after) / 2

    def agreement(choices: list[str | None]) -> tuple[float | None, int]:
        scored = [
            (c, human[p.pair_id]) for c, p in zip(choices, found.pairs, strict=True) if c and human[p.pair_id] in "ab"
        ]
        return (sum(c == h for c, h in scored) / len(scored) if scored else None), len(scored)

    judge_choices = [None if v.p_a is None or v.p_a == 0.5 else ("a" if v.p_a > 0.5 else "b") for v in verdicts]
    letters = [read_letter(r.text) for r in replies]
    reference_choices = [letter.lower() if letter else None for letter in letters]
    judge_agreement, judge_n = agreement(judge_choices)
    reference_agreement, reference_n = agreement(reference_choices)
    print(
        json.dumps(
            {
                **result,
                "judge_pairs_per_s": round(n / judge_seconds, 3),
                "judge_seconds_before_and_after": [round(judge_before, 1), round(judge_after, 1)],
                "reference_pairs_per_s": round(n / reference_seconds, 3),
                "speedup": round(reference_seconds / judge_seconds, 1),
                "judge_agreement_with_humans": judge_agreement,
                "judge_pairs_compared": judge_n,
                "reference_agreement_with_humans": reference_agreement,
                "reference_pairs_compared": reference_n,
                "reference_unreadable_rate": round(sum(letter is None for letter in letters) / n, 3),
                "reference_mean_tokens": round(sum(r.completion_tokens for r in replies) / n, 1),
                "judge_position_consistency": round(
                    sum((v.p_order1 > 0.5) != (v.p_order2 > 0.5) for v in verdicts) / n, 3
                ),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
