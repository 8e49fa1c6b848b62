"""`cai bench generate`: the sequential reference loop against the batched pipeline."""

from __future__ import annotations

import json

from ..backends import DTYPES
from ..workspace import Workspace


def cmd_bench_generate(args, ws: Workspace) -> int:
    from ..bench import bench_generate

    print(
        json.dumps(
            bench_generate(
                args.model,
                ws,
                prompts=args.prompts,
                rounds=args.rounds,
                new_tokens=args.new_tokens,
                few_shot=args.few_shot,
            ),
            indent=1,
        )
    )
    return 0


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="Benchmarks that print a ratio against a baseline run alongside.")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    p = bench_sub.add_parser("generate", help="Sequential reference loop versus the batched pipeline.")
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--few-shot", action="store_true", help="Include the constitution's worked examples.")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="Precision of the local model, on both sides.")
    p.set_defaults(func=cmd_bench_generate)
