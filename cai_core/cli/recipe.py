"""`cai recipe run|status|report FILE`: the CAI recipe (SL-CAI then RL-CAI, iterated) as one resumable job."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from ..recipe import RecipeConfig, load_recipe, report_html, stage_table
from ..store import Store
from ..tracking import TrackerChoice
from ..workspace import Workspace
from .jobs import start_job


def cmd_recipe_run(args, ws: Workspace) -> int:
    """Start the recipe, or resume it at its first unfinished stage."""
    config = load_recipe(args.file)
    if args.tracker:
        config = dataclasses.replace(config, tracker=args.tracker)
    return start_job("recipe", args, ws, config)[0]


def cmd_recipe_status(args, ws: Workspace) -> int:
    for row in stage_table(load_recipe(args.file), ws):
        took = f"{row['seconds']:.0f}s" if row["seconds"] is not None else ""
        print(
            f"i{row['iteration']} {row['arm']:<12} {row['step']:<9} {row['status']:<12} "
            f"{row['done']:>5}/{row['total']:<5} {took:>6}  {row['run_id']}"
        )
        if row["warnings"]:
            print(f"  warning: {row['warnings']}")
    return 0


def cmd_recipe_report(args, ws: Workspace) -> int:
    config = load_recipe(args.file)
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        page = report_html(config, ws, store)
    out = Path(args.out).resolve()
    out.write_text(page, encoding="utf-8")
    print(f"wrote the report to {out} ({out.stat().st_size // 1024} KiB, one file, opens offline)")
    return 0


def add_parsers(sub) -> None:
    recipe = sub.add_parser("recipe", help="The CAI recipe: SL-CAI then RL-CAI, iterated, in one resumable run.")
    recipe_sub = recipe.add_subparsers(dest="action", required=True)
    p = recipe_sub.add_parser("run", help="Run a recipe YAML (see recipes/); rerunning resumes where it stopped.")
    p.add_argument("file", help="The recipe YAML file.")
    p.add_argument("--background", action="store_true", help="Start it detached and return at once.")
    tracker = {f.name: f for f in dataclasses.fields(RecipeConfig)}["tracker"]
    p.add_argument(
        "--tracker",
        choices=typing.get_args(TrackerChoice),
        help=tracker.metadata["help"] + " The recipe and every stage report there (the file's `tracker` otherwise).",
    )
    p.set_defaults(func=cmd_recipe_run)
    p = recipe_sub.add_parser("status", help="Each stage of a recipe: its run, status and progress.")
    p.add_argument("file", help="The recipe YAML file.")
    p.set_defaults(func=cmd_recipe_status)
    p = recipe_sub.add_parser("report", help="Write the whole run (curves, monitor, examples) to one HTML file.")
    p.add_argument("file", help="The recipe YAML file.")
    p.add_argument("--out", default="cai-recipe-report.html", help="Where to write the report.")
    p.set_defaults(func=cmd_recipe_report)
