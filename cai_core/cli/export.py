"""`cai export`: SFT data, revision pairs and preferences in TRL's formats."""

from __future__ import annotations

from pathlib import Path

from ..exports import FORMATS, KINDS, export_path, export_rows, write_export
from ..store import Store
from ..workspace import Workspace


def cmd_export(args, ws: Workspace) -> int:
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        rows = export_rows(
            store,
            args.kind,
            constitution_version=args.constitution_version,
            max_round=args.max_round,
            run_id=args.run_id,
            min_confidence=args.min_confidence,
            calibration=args.calibration,
        )
    if rows.empty:
        raise ValueError("nothing to export: no rows match (run `cai generate` first, or loosen the filters)")
    out = Path(args.out) if args.out else export_path(ws, args.kind, args.format)
    write_export(rows, out, args.format)
    print(f"wrote {len(rows)} {args.kind} rows to {out.resolve()}")
    return 0


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
    p.set_defaults(func=cmd_export)
