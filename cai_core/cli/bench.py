"""`cai bench generate`: the sequential reference loop against the batched pipeline."""

from __future__ import annotations

import json
import sys

from ..bench import BenchConfig
from ..workspace import Workspace
from .flags import add_dataclass_arguments, config_from_args


def cmd_bench_generate(args, ws: Workspace) -> int:
    from ..bench import run_bench

    def progress(side: str, result: dict) -> None:
        print(f"{side}: {json.dumps(result)}", file=sys.stderr, flush=True)

    print(json.dumps(run_bench(config_from_args(BenchConfig, args), ws, on_result=progress), indent=1))
    return 0


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="Benchmarks that print a ratio against a baseline run alongside.")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    p = bench_sub.add_parser("generate", help="Sequential reference loop versus the batched pipeline.")
    add_dataclass_arguments(p, BenchConfig)
    p.set_defaults(func=cmd_bench_generate)
