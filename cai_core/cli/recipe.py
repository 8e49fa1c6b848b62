"""`cai recipe run|status FILE`: the CAI recipe (SL-CAI then RL-CAI, iterated) as one resumable job."""

from __future__ import annotations

from ..recipe import load_recipe, prepare_recipe, stage_table
from ..workspace import Workspace
from .jobs import launch, run_here


def cmd_recipe_run(args, ws: Workspace) -> int:
    """Start the recipe, or resume it at its first unfinished stage."""
    config = load_recipe(args.file)
    job = prepare_recipe(config, ws)
    if args.background:
        return launch(job, ws)
    return run_here("recipe", config, ws)


def cmd_recipe_status(args, ws: Workspace) -> int:
    for row in stage_table(load_recipe(args.file), ws):
        took = f"{row['seconds']:.0f}s" if row["seconds"] is not None else ""
        print(
            f"i{row['iteration']} {row['arm']:<12} {row['step']:<9} {row['status']:<12} "
            f"{row['done']:>5}/{row['total']:<5} {took:>6}  {row['run_id']}"
        )
    return 0


def add_parsers(sub) -> None:
    recipe = sub.add_parser("recipe", help="The CAI recipe: SL-CAI then RL-CAI, iterated, in one resumable run.")
    recipe_sub = recipe.add_subparsers(dest="action", required=True)
    p = recipe_sub.add_parser("run", help="Run a recipe YAML (see recipes/); rerunning resumes where it stopped.")
    p.add_argument("file", help="The recipe YAML file.")
    p.add_argument("--background", action="store_true", help="Start it detached and return at once.")
    p.set_defaults(func=cmd_recipe_run)
    p = recipe_sub.add_parser("status", help="Each stage of a recipe: its run, status and progress.")
    p.add_argument("file", help="The recipe YAML file.")
    p.set_defaults(func=cmd_recipe_status)
