"""`cai bench generate`: the sequential reference loop against the batched pipeline."""

from __future__ import annotations

import dataclasses
import json

from ..bench import BenchConfig
from ..workspace import Workspace
from .flags import add_dataclass_arguments, config_from_args


def cmd_bench_generate(args, ws: Workspace) -> int:
    from ..bench import bench_generate

    config = dataclasses.asdict(config_from_args(BenchConfig, args))
    print(json.dumps(bench_generate(config.pop("model"), ws, **config), indent=1))
    return 0


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="Benchmarks that print a ratio against a baseline run alongside.")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    p = bench_sub.add_parser("generate", help="Sequential reference loop versus the batched pipeline.")
    add_dataclass_arguments(p, BenchConfig)
    p.set_defaults(func=cmd_bench_generate)
