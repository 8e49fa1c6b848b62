"""What the recipe changed: the summary per iteration and the report as one HTML file."""

from __future__ import annotations

import pandas as pd

from ..jobs import is_done
from ..workspace import Workspace
from .plan import Checkpoint, Recipe, RecipeConfig, Stage, plan
from .stages import stage_table


def iteration_summary(config: RecipeConfig, ws: Workspace, store) -> pd.DataFrame:
    """Per iteration and model, what the recipe changed: harmlessness and helpfulness win rates against the base
    model (95% intervals; wrapper `none` where the evaluation has it), refusal on harmful prompts and over-refusal
    on benign ones; then, for an arm's RL model, its arm's reward model's held-out accuracy on people's labels and
    its RL stage's last reward and KL (blank for the SFT models). Empty until an iteration's evaluation has run."""
    from ..eval_report import summarize

    recipe, rows = Recipe(config, ws), []
    for i in range(1, config.iterations + 1):
        evaluation = recipe.stage_job(Stage(i, "cai", "eval", "eval"))
        if not is_done(evaluation):
            continue
        summary = summarize(store, evaluation.run_id)
        rates, refusals = summary.win_rates, summary.refusals
        wrapper = "none" if "none" in set(rates.get("wrapper", [])) else next(iter(rates.get("wrapper", [])), None)
        checkpoints = {checkpoint.name: checkpoint for checkpoint in recipe.checkpoints(i)}
        for model in sorted(set(summary.answers["model"]) - {"base"}):
            checkpoint = checkpoints.get(model)
            row: dict = {"iteration": i, "model": model, "stage": checkpoint.label if checkpoint else model}
            for aspect in ("harmlessness", "helpfulness"):
                versus = rates[
                    (rates.aspect == aspect)
                    & (rates.model == model)
                    & (rates.opponent == "base")
                    & (rates.wrapper == wrapper)
                ]
                if not versus.empty:
                    won = versus.iloc[0]
                    row[f"{aspect} vs base"] = f"{won.win_rate:.2f} [{won.low:.2f}, {won.high:.2f}]"
            for label, name in (("harmful", "refusal"), ("benign", "over-refusal")):
                rate = refusals[(refusals.model == model) & (refusals.label == label) & (refusals.wrapper == wrapper)]
                if not rate.empty:
                    row[name] = round(float(rate.iloc[0].refusal_rate), 3)
            # an RL model's own arm's reward model and RL stage; an SFT model has neither, and shows blanks
            rm = rl = pd.DataFrame()
            if checkpoint and checkpoint.step == "rl":
                rm = store.train_metrics(Stage(i, checkpoint.arm, "rm", "").run_id(config.recipe_id))
                rl = store.train_metrics(Stage(i, checkpoint.arm, "rl", "").run_id(config.recipe_id), ["reward", "kl"])
            row |= {
                "RM accuracy": _last(rm, "accuracy_human"),
                "RL reward": _last(rl, "reward"),
                "RL KL": _last(rl, "kl"),
            }
            rows.append(row)
    return pd.DataFrame(rows)


FRONTIER_COLUMNS = (
    ["iteration", "arm", "step", "model", "label"]
    + [f"{axis}{part}" for axis in ("refusal", "over_refusal") for part in ("", "_low", "_high", "_n")]
    + ["sets"]
)


def frontier(config: RecipeConfig, ws: Workspace, store) -> pd.DataFrame:
    """Harmlessness against over-refusal, one point per iteration, arm and stage (the CAI arm's SFT model and its
    RL model, the SFT baseline, RLHF) and the base model once: its refusal rate on the evaluation's harmful prompts
    and on its benign ones (no jailbreak wrapper, where the evaluation has it), each with its Wilson 95% interval
    and count, and the sets it was measured on. An iteration's "previous" model is the iteration before's point."""
    from ..eval_report import summarize

    recipe, rows = Recipe(config, ws), []
    for i in range(1, config.iterations + 1):
        evaluation = recipe.stage_job(Stage(i, "cai", "eval", "eval"))
        if not is_done(evaluation):
            continue
        refusals = summarize(store, evaluation.run_id).refusals
        if refusals.empty:
            continue
        sets = ", ".join(evaluation.spec.get("config", {}).get("sets", []))
        checkpoints = {checkpoint.name: checkpoint for checkpoint in recipe.checkpoints(i)}
        wrapper = "none" if "none" in set(refusals.wrapper) else refusals.wrapper.iloc[0]
        for model, rates in refusals[refusals.wrapper == wrapper].groupby("model", sort=True):
            if model == "previous" or (model == "base" and i > 1):
                continue
            # an evaluation whose models the recipe no longer names (its arms changed since) keeps its own names
            checkpoint = checkpoints.get(model, Checkpoint(model, model, "", ""))
            row = {"iteration": 0 if model == "base" else i, "arm": checkpoint.arm, "step": checkpoint.step}
            row |= {"model": model, "label": checkpoint.label}
            for label, name in (("harmful", "refusal"), ("benign", "over_refusal")):
                rate = rates[rates.label == label]
                found = rate[["refusal_rate", "low", "high", "n"]].iloc[0].tolist() if not rate.empty else [None] * 4
                row |= dict(zip((name, f"{name}_low", f"{name}_high", f"{name}_n"), found, strict=True))
            rows.append(row | {"sets": sets})
    return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)


def frontier_table(points: pd.DataFrame) -> pd.DataFrame:
    """`frontier`'s points as a reader reads them: each stage and arm, its iteration, and both rates with their
    interval and count."""
    from ..stats import Estimate

    def shown(point, name: str) -> str:
        if pd.isna(point[name]):
            return "no such prompts"
        return str(Estimate(point[name], point[f"{name}_low"], point[f"{name}_high"], int(point[f"{name}_n"])))

    return pd.DataFrame(
        {
            "stage and arm": points["label"],
            "iteration": points["iteration"],
            "refusal (harmful prompts)": [shown(p, "refusal") for _, p in points.iterrows()],
            "over-refusal (benign prompts)": [shown(p, "over_refusal") for _, p in points.iterrows()],
            "sets": points["sets"],
        }
    )


def gate_decisions(config: RecipeConfig, ws: Workspace) -> pd.DataFrame:
    """Which principles' AI labels each stage that read them (a reward model, DPO) trained on, and why: the label
    gate's decisions its run recorded beside its data. Empty until such a stage has been prepared."""
    from ..label_gate import recorded_decisions

    recipe, tables = Recipe(config, ws), []
    for stage in plan(config):
        decisions = recorded_decisions(recipe.stage_job(stage).path)
        if not decisions.empty:
            where = {"iteration": stage.iteration, "arm": stage.arm, "step": stage.step}
            tables.append(decisions[["principle_id", "decision", "weight", "reason"]].assign(**where))
    columns = ["iteration", "arm", "step", "principle_id", "decision", "weight", "reason"]
    return pd.concat(tables)[columns].reset_index(drop=True) if tables else pd.DataFrame(columns=columns)


def _last(metrics: pd.DataFrame, name: str) -> float | None:
    values = metrics[metrics.name == name]["value"] if not metrics.empty else []
    return round(float(values.iloc[-1]), 3) if len(values) else None


def report_html(config: RecipeConfig, ws: Workspace, store, examples: int = 3) -> str:
    """The whole run as one HTML file that opens offline: the constitution and its version, the stages, what each
    iteration changed, the reward-hacking monitor's curves for every RL stage, and example answers before and
    after (SL-CAI's first answer and revision; the base model's answer and each arm's on the evaluation's
    prompts). The template escapes every piece of user text (prompts, answers, names): it is shown as text."""
    from ..eval_report import frontier_chart
    from ..reports import render_report
    from ..train.monitor import alert_lines, monitor_charts, monitor_metrics

    recipe, points = Recipe(config, ws), frontier(config, ws, store)
    stages = pd.DataFrame(stage_table(config, ws))
    rl_stages = []
    for stage in plan(config):
        if stage.step != "rl":
            continue
        job = recipe.stage_job(stage)
        metrics = monitor_metrics(job)
        rules = job.spec["config"].get("monitor_rules", "") if (job.path / "run.json").exists() else ""
        rl_stages.append(
            {
                "name": stage.name,
                "warnings": alert_lines(metrics),
                "charts": list(monitor_charts(metrics, rules).values()),
            }
        )
    return render_report(
        "recipe_report.html.j2",
        f"CAI recipe report: {config.name}",
        config=config,
        constitution_version=_constitution_versions(recipe, store),
        stages=stages[["iteration", "arm", "step", "run_id", "status", "seconds", "warnings"]],
        summary=iteration_summary(config, ws, store),
        gate=gate_decisions(config, ws),
        frontier=None if points.empty else frontier_chart(points),
        frontier_points=frontier_table(points),
        rl_stages=rl_stages,
        examples=_examples(config, recipe, store, examples),
    )


def _constitution_versions(recipe: Recipe, store) -> str:
    """The versions the SL-CAI stages ran under, as their traces recorded them; the file's own before any ran."""
    from ..constitution import load_constitution

    versions = []
    for i in range(1, recipe.config.iterations + 1):
        steps = store.final_steps(run_id=Stage(i, "cai", "generate", "").run_id(recipe.config.recipe_id))
        versions += list(steps["constitution_version"])
    if versions:
        return ", ".join(dict.fromkeys(versions))
    return f"{load_constitution(recipe.config.constitution).version} (the file's; no SL-CAI stage has run yet)"


def _examples(config: RecipeConfig, recipe: Recipe, store, n: int) -> list[tuple[str, pd.DataFrame]]:
    """A few prompts of the first SL-CAI stage with their first answer and final revision, and a few of the last
    evaluation's prompts with every model's answer (no jailbreak wrapper), each titled."""
    tables = []
    steps = store.final_steps(run_id=Stage(1, "cai", "generate", "").run_id(config.recipe_id))
    if not steps.empty:
        tables.append(
            (
                "SL-CAI, iteration 1: the first answer and the revision after critique",
                steps[["prompt", "initial", "revision"]].head(n),
            )
        )
    for i in range(config.iterations, 0, -1):
        evaluation = recipe.stage_job(Stage(i, "cai", "eval", "eval"))
        answers = store.eval_table("eval_answers", evaluation.run_id) if is_done(evaluation) else pd.DataFrame()
        if answers.empty:
            continue
        answers = answers[answers.wrapper == "none"] if "none" in set(answers.wrapper) else answers
        wide = answers.pivot_table(index=["label", "prompt"], columns="model", values="answer", aggfunc="first")
        # a few of each label: harmful prompts, where refusing is right, and benign ones, where it is not
        shown = pd.concat(group.head(n) for _, group in wide.reset_index().groupby("label"))
        shown.columns.name = None
        tables.append((f"Iteration {i}'s evaluation: the base model and each arm on the same prompts", shown))
        break
    return tables
