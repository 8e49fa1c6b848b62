"""`cai export`: SFT data, revision pairs and preferences in TRL's formats, here or from a background job."""

from __future__ import annotations

import os
from pathlib import Path

from ..export_job import ExportConfig, matching_rows
from ..exports import FORMATS, KINDS, export_path, read_probability, write_export
from ..jobs import prepare
from ..store import Store
from ..workspace import Workspace
from .jobs import launch


def cmd_export(args, ws: Workspace) -> int:
    settings = {name: getattr(args, name) for name in ("kind", "format", "out", "constitution_version", "max_round")}
    settings |= {"min_confidence": args.min_confidence, "calibration": args.calibration, "gate": args.gate}
    settings["raw_labels"] = args.raw_labels
    config = ExportConfig(**settings, source_run=args.run_id)
    if args.background:  # the rows are read here, where the database is, and written by the job's process
        return launch(prepare("export", config, ws), ws)
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        rows = matching_rows(store, config, ws)
    out = Path(args.out) if args.out else export_path(ws, args.kind, args.format)
    write_export(rows, out, args.format)
    print(f"wrote {len(rows)} {args.kind} rows to {out.resolve()}")
    if args.kind == "preferences" and len(rows):
        print(f"P(a better): {read_probability(rows)}")
    if args.push_to:
        from ..hub import push_export

        with Store.open(ws) as store:
            url = push_export(out, args.push_to, args.kind, token=args.token, store=store, private=not args.public)
        print(f"pushed to {args.push_to} ({'public' if args.public else 'private'}): {url}")
    return 0


def cmd_push_model(args, ws: Workspace) -> int:
    from ..hub import push_model
    from ..jobs import JobFolder

    url = push_model(JobFolder(ws.runs_dir / args.run_id), args.repo, token=args.token, private=not args.public)
    print(f"pushed {args.run_id}'s model to {args.repo} ({'public' if args.public else 'private'}): {url}")
    return 0


def add_hub_arguments(p) -> None:
    p.add_argument("--token", default=os.environ.get("HF_TOKEN"), help="A Hub token with write access (HF_TOKEN).")
    p.add_argument("--public", action="store_true", help="Make a new repository public (private by default).")


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="Write SFT data or revision pairs in TRL's formats.")
    p.add_argument("--kind", choices=KINDS, default="sft")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--out", help="Output file (a folder for --format hf). Default: DATA_DIR/exports/KIND.")
    p.add_argument("--constitution-version")
    p.add_argument("--max-round", type=int, help="Use the revision of this round at most.")
    p.add_argument("--run-id", help="The run the rows come from (for preferences: a label run, or `human`).")
    p.add_argument(
        "--min-confidence", type=float, default=0.0, help="Preferences only: keep pairs with |2 P - 1| at least this."
    )
    p.add_argument("--calibration", help="Preferences only: read the judge's labels through this `cai calibrate` id.")
    p.add_argument(
        "--gate",
        action="store_true",
        help="Preferences only: weigh each principle's AI labels by its agreement with people (see `cai gate`).",
    )
    p.add_argument(
        "--raw-labels",
        action="store_true",
        help="Preferences only: the judge's raw P(a better), even where its run stored a calibrated one.",
    )
    p.add_argument("--background", action="store_true", help="Write it from a job, detached; return at once.")
    p.add_argument("--push-to", metavar="REPO", help="Then push it to this Hub dataset repo (needs HF_HUB_OFFLINE=0).")
    add_hub_arguments(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("push-model", help="Push a finished training run's model to a Hub model repo.")
    p.add_argument("run_id")
    p.add_argument("repo", help="The Hub repository, owner/name.")
    add_hub_arguments(p)
    p.set_defaults(func=cmd_push_model)
