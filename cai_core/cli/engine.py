"""`cai engine start|status|stop [MODEL]`: the workbench's vLLM service for a model (`cai_core.engine_service`)."""

from __future__ import annotations

from .. import engine_service
from ..backends import DTYPES
from ..workspace import Workspace


def cmd_engine_start(args, ws: Workspace) -> int:
    service = engine_service.start(ws, engine_service.model_folder(args.model, ws), args.dtype, owner="cli")
    print(f"{service.name} ({service.dtype}) on {service.url}, pid {service.pid}; `cai engine stop` stops it")
    return 0


def cmd_engine_status(args, ws: Workspace) -> int:
    rows = engine_service.describe(ws)
    if not rows:
        print("no engine service runs for this data folder")
    for row in rows:
        print(
            f"{row['model']} ({row['dtype']}) {row['state']} on {row['url']}, pid {row['pid']}, "
            f"{row['memory_mib']} MiB, since {row['since']}, started by {row['owner']}"
        )
    return 0


def cmd_engine_stop(args, ws: Workspace) -> int:
    model = engine_service.model_folder(args.model, ws) if args.model else None
    stopped = engine_service.stop(ws, model, None if args.dtype == "any" else args.dtype)
    for service in stopped:
        print(f"stopped {service.name} ({service.dtype}), pid {service.pid}")
    if not stopped:
        print("no engine service was running" + (f" for {args.model}" if args.model else ""))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("engine", help="Start, show or stop the vLLM service that jobs and pages share.")
    verbs = p.add_subparsers(dest="verb", required=True)
    start = verbs.add_parser("start", help="Start the service for a model (or find it running); minutes on a CPU.")
    start.add_argument("model", nargs="?", default="default", help="A local model spec (default: default).")
    start.add_argument("--dtype", choices=DTYPES, default="auto", help="One service runs per model and dtype.")
    start.set_defaults(func=cmd_engine_start)
    status = verbs.add_parser("status", help="What runs: model, URL (loopback), memory, since when.")
    status.set_defaults(func=cmd_engine_status)
    stop = verbs.add_parser("stop", help="Stop the service of a model, or every one.")
    stop.add_argument("model", nargs="?", help="A local model spec; every service when left out.")
    stop.add_argument("--dtype", choices=(*DTYPES, "any"), default="any")
    stop.set_defaults(func=cmd_engine_stop)
