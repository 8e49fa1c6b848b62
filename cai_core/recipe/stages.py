"""Running the recipe: its job kind, whose work runs every stage (an ordinary job of its own) through the one
job runner, and the stage table that the Recipe page and `cai recipe status` show."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import yaml

from .. import jobs
from ..jobs import JobFolder, JobKind, StagedWork
from ..workspace import Workspace
from .plan import Recipe, RecipeConfig, Stage, plan


def _run_stage(recipe: Recipe, stage: Stage, config) -> JobFolder:
    """Run one stage's job to its end in this process, as `cai resume` would."""
    if stage.kind == "label":  # the pairs this iteration sampled, not every pair stored
        return jobs.run("label", config, recipe.ws, pairs=recipe.label_pairs(stage))
    return jobs.run(stage.kind, config, recipe.ws)


def _make_folder(config: RecipeConfig, ws: Workspace) -> JobFolder:
    """Create (or find) the recipe's folder, named by its own id (`recipe_id`), with the recipe as YAML beside its
    outputs and its prompts copied in."""
    recipe = Recipe(config, ws)
    JobFolder.create(
        ws.runs_dir, config.recipe_id, {"kind": "recipe", "model": config.policy, "config": dataclasses.asdict(config)}
    )
    recipe_yaml = recipe.job.path / "recipe.yaml"
    if not recipe_yaml.exists():
        recipe_yaml.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), encoding="utf-8")
    recipe.write_prompts()
    return recipe.job


class RecipeWork(StagedWork):
    """The recipe's stages, in the order `plan` gives them."""

    table = "recipe_stages"

    def __init__(self, recipe: Recipe, on_stage: Callable[[Stage, str], None] | None = None):
        self.recipe = recipe
        super().__init__(recipe.job, plan(recipe.config), on_stage)

    def stage_job(self, stage: Stage) -> JobFolder:
        return self.recipe.stage_job(stage)

    def run_stage(self, stage: Stage) -> JobFolder:
        return _run_stage(self.recipe, stage, self.recipe.build(stage))

    def stage_record(self, stage: Stage) -> dict:
        row = {"recipe_id": self.recipe.config.recipe_id, "iteration": stage.iteration, "arm": stage.arm}
        return row | {"step": stage.step, "kind": stage.kind}


def _recipe_work(job: JobFolder, config: RecipeConfig, ws: Workspace, on_stage=None) -> RecipeWork:
    return RecipeWork(Recipe(config, ws), on_stage)


RECIPE = JobKind("recipe", RecipeConfig, _make_folder, _recipe_work, "recipe")


def stage_table(config: RecipeConfig, ws: Workspace) -> list[dict]:
    """Each stage with its run id, status, progress and times: what the Recipe page and `cai recipe status`
    show. Read from the stage jobs' own folders, so it is current while a stage runs."""
    from ..train.monitor import alert_lines, monitor_metrics

    recipe = Recipe(config, ws)
    ended = {row["run_id"]: row for row in recipe.job.read("recipe_stages")} if recipe.job.path.exists() else {}
    rows = []
    for stage in plan(config):
        job = recipe.stage_job(stage)
        exists = (job.path / "run.json").exists()
        progress = job.progress() if exists else None
        record = ended.get(job.run_id, {})
        warnings = alert_lines(monitor_metrics(job)) if exists and stage.step == "rl" else []
        rows.append(
            {
                "iteration": stage.iteration,
                "arm": stage.arm,
                "step": stage.step,
                "kind": stage.kind,
                "run_id": job.run_id,
                "status": progress.status if progress else "not started",
                "done": progress.done if progress else 0,
                "total": progress.total if progress else 0,
                "message": progress.message if progress else "",
                "seconds": (record["ended_at"] - record["started_at"]) if record else None,
                "warnings": "; ".join(f"reward-hacking monitor: {line}" for line in warnings),
            }
        )
    return rows
