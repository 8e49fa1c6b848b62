"""The CAI recipe: the seed's protocol (alternate SL-CAI and RL-CAI, KL to the SFT model) as one resumable run.

A recipe is a typed config saved as YAML beside its outputs. Each iteration runs, as ordinary jobs:

    generate (SL-CAI on the current policy) -> sft (on the revisions)            [stop_after: sft ends here]
    -> pairs (sampled from the SFT model) -> label (the AI judge, this constitution) -> rm -> rl (PPO, DPO, GRPO
    or RLOO from the SFT model, whose KL keeps it near the SFT model) -> eval (against the base and the previous
    iteration)

and the comparison arms beside it, on the same prompts and budgets:
- `sft-baseline`: standard SFT on the same generation's initial answers (no critique): CAI against plain SFT;
- `rlhf`: the same RL stage against a reward model trained on people's labels: RLAIF against RLHF.

Every stage is a job of its own (its folder, progress, cancel, log), whose run id names the recipe, the iteration
and the stage (`recipe-ab12cd3456-i1-sft`): that is the lineage every table shows. The recipe job runs the stages
one after another in its own process and spools a record per finished stage; rerunning it skips the stages whose
jobs are done and resumes the one that stopped, so a kill at any moment loses at most that stage's batch in flight.
A cancel of the recipe is passed on to the stage that is running.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml

from .constitution import ConstitutionError, read_strict_yaml
from .jobs import Cancelled, JobFolder, run_id_for, run_job
from .records import now
from .workspace import PROJECT_ROOT, Workspace

ARMS = ("cai", "sft-baseline", "rlhf")
RL_KINDS = ("ppo", "dpo", "grpo", "rloo")


class RecipeError(ValueError):
    """A recipe that cannot run as written; the message names the field."""


@dataclass
class RecipeConfig:
    name: str = field(default="cai-recipe", metadata={"help": "What the recipe is called in lists and reports."})
    policy: str = field(
        default="default", metadata={"help": "The base model the first iteration starts from.", "model_spec": True}
    )
    critic: str | None = field(
        default=None,
        metadata={"help": "Model that critiques and revises; the current policy when unset.", "model_spec": True},
    )
    judge: str = field(
        default="default", metadata={"help": "Model that labels pairs and judges the evaluation.", "model_spec": True}
    )
    constitution: str = field(default="constitutions/hhh.yaml", metadata={"help": "The constitution YAML."})
    red_team_prompts: str = field(default="data/demo_prompts.jsonl", metadata={"help": "Harmful prompts."})
    helpful_prompts: str | None = field(default=None, metadata={"help": "Helpful prompts mixed in, if any."})
    iterations: int = field(default=1, metadata={"help": "SL-CAI then RL-CAI, this many times."})
    stop_after: Literal["sft", "rl"] = field(default="rl", metadata={"help": "sft: an SL-CAI-only recipe."})
    rl: Literal["ppo", "dpo", "grpo", "rloo"] = field(default="ppo", metadata={"help": "The RL-CAI algorithm."})
    arms: list[str] = field(
        default_factory=lambda: ["cai"],
        metadata={"help": "cai, plus the comparison arms sft-baseline (SFT without critique) and rlhf."},
    )
    generate: dict = field(default_factory=dict, metadata={"help": "GenerateConfig fields for every SL-CAI stage."})
    sft: dict = field(default_factory=dict, metadata={"help": "SFTConfig fields for every SFT stage."})
    pairs: dict = field(default_factory=dict, metadata={"help": "SampleConfig fields for every sampling stage."})
    label: dict = field(default_factory=dict, metadata={"help": "LabelConfig fields for every labelling stage."})
    reward: dict = field(default_factory=dict, metadata={"help": "RewardConfig fields for every reward model."})
    rl_config: dict = field(default_factory=dict, metadata={"help": "The RL algorithm's config fields."})
    eval: dict = field(default_factory=dict, metadata={"help": "EvalConfig fields for every evaluation."})

    def check(self) -> None:
        if self.iterations < 1:
            raise RecipeError(f"iterations is {self.iterations}: it must be at least 1")
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown or "cai" not in self.arms:
            raise RecipeError(f"arms {self.arms}: choose from {', '.join(ARMS)}, cai included")
        if self.stop_after == "sft" and "rlhf" in self.arms:
            raise RecipeError("arms: rlhf compares RL stages, which an SFT-only recipe (stop_after: sft) has none of")
        if self.rl not in RL_KINDS:
            raise RecipeError(f"rl is {self.rl!r}: choose one of {', '.join(RL_KINDS)}")
        for section, cls in self.stage_configs().items():
            known = {f.name for f in dataclasses.fields(cls)} - {"run_id"}
            if unknown := sorted(set(getattr(self, section)) - known):
                fields = ", ".join(sorted(known))
                raise RecipeError(f"{section}: unknown {cls.__name__} field(s) {', '.join(unknown)}; known: {fields}")

    def stage_configs(self) -> dict[str, type]:
        """Each settings section and the config class whose fields it holds."""
        from .critique import GenerateConfig
        from .evaluation import EvalConfig
        from .feedback import LabelConfig
        from .pairs import SampleConfig
        from .train import config_class

        return {
            "generate": GenerateConfig,
            "sft": config_class("sft"),
            "pairs": SampleConfig,
            "label": LabelConfig,
            "reward": config_class("rm"),
            "rl_config": config_class(self.rl),
            "eval": EvalConfig,
        }

    @property
    def recipe_id(self) -> str:
        return run_id_for("recipe", dataclasses.asdict(self))


PATH_FIELDS = ("constitution", "red_team_prompts", "helpful_prompts")


def load_recipe(path: str | Path) -> RecipeConfig:
    """A recipe YAML file as a config; unknown fields are refused with their names. Relative paths in it are read
    from the project folder, as the shipped recipes are written, wherever the command runs."""
    try:
        # Read as a constitution is: a few lines of aliases expand into gigabytes wherever the value is shown.
        data = read_strict_yaml(path, "recipe") or {}
    except ConstitutionError as exc:
        raise RecipeError(str(exc)) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe fields")
    known = {f.name for f in dataclasses.fields(RecipeConfig)}
    if unknown := sorted(set(data) - known):
        raise RecipeError(f"{path}: unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name in PATH_FIELDS:
        if data.get(name) and not Path(data[name]).is_absolute():
            data[name] = str(PROJECT_ROOT / data[name])
    recipe = RecipeConfig(**data)
    recipe.check()
    return recipe


# --- the plan ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One job of the recipe. `kind` is the job kind (generate, pairs, label, eval, train-sft, ...)."""

    iteration: int
    arm: str
    step: str  # generate, sft, pairs, label, rm, rl, eval
    kind: str

    def run_id(self, recipe_id: str) -> str:
        suffix = self.step if self.arm == "cai" else f"{self.step}-{self.arm}"
        return f"{recipe_id}-i{self.iteration}-{suffix}"

    @property
    def name(self) -> str:
        return f"iteration {self.iteration} · {self.step}" + ("" if self.arm == "cai" else f" ({self.arm})")


def plan(recipe: RecipeConfig) -> list[Stage]:
    """Every stage, in the order they run."""
    stages = []
    for i in range(1, recipe.iterations + 1):
        stages.append(Stage(i, "cai", "generate", "generate"))
        stages.append(Stage(i, "cai", "sft", "train-sft"))
        if "sft-baseline" in recipe.arms:
            stages.append(Stage(i, "sft-baseline", "sft", "train-sft"))
        if recipe.stop_after == "rl":
            stages.append(Stage(i, "cai", "pairs", "pairs"))
            stages.append(Stage(i, "cai", "label", "label"))
            if recipe.stage_configs()["rl_config"].needs_reward_model:
                stages.append(Stage(i, "cai", "rm", "train-rm"))
            stages.append(Stage(i, "cai", "rl", f"train-{recipe.rl}"))
            if "rlhf" in recipe.arms:
                if recipe.stage_configs()["rl_config"].needs_reward_model:
                    stages.append(Stage(i, "rlhf", "rm", "train-rm"))
                stages.append(Stage(i, "rlhf", "rl", f"train-{recipe.rl}"))
        stages.append(Stage(i, "cai", "eval", "eval"))
    return stages


class Recipe:
    """A recipe and its folder: what each stage is asked to do, given what the stages before it made."""

    def __init__(self, config: RecipeConfig, ws: Workspace):
        self.config, self.ws = config, ws
        self.job = JobFolder(ws.runs_dir / config.recipe_id)

    def stage_job(self, stage: Stage) -> JobFolder:
        return JobFolder(self.ws.runs_dir / stage.run_id(self.config.recipe_id))

    def model_of(self, iteration: int, arm: str, step: str) -> str:
        """The folder a training stage's model lands in."""
        return str(self.stage_job(Stage(iteration, arm, step, "")).path / "final")

    def policy(self, iteration: int, arm: str) -> str:
        """The model an iteration starts from: the base, then the arm's last model of the iteration before."""
        if iteration == 1:
            return self.config.policy
        return self.model_of(iteration - 1, arm, self.last_step(arm))

    def last_step(self, arm: str) -> str:
        """The step whose model ends an arm's iteration: SFT for an SFT-only recipe and the sft-baseline arm."""
        return "sft" if self.config.stop_after == "sft" or arm == "sft-baseline" else "rl"

    @property
    def prompts_file(self) -> str:
        return str(self.job.path / "prompts.jsonl")

    def write_prompts(self) -> None:
        """The red-team and helpful prompts as one file, copied once: every stage reads the same prompts even if
        the sources change."""
        from .prompts import load_prompts

        if Path(self.prompts_file).exists():
            return
        rows = []
        for source, category in ((self.config.red_team_prompts, "red-team"), (self.config.helpful_prompts, "helpful")):
            if source:
                for p in load_prompts(source).prompts:
                    rows.append({"id": p.id, "prompt": p.prompt, "category": p.category or category})
        self.job.write_input("prompts", rows)

    def build(self, stage: Stage):
        """The stage's config, from the recipe's settings for that step and the runs before it."""
        c, i = self.config, stage.iteration
        run_id = stage.run_id(c.recipe_id)
        sft_model = self.model_of(i, "cai", "sft")
        if stage.step == "generate":
            from .critique import GenerateConfig

            return GenerateConfig(
                **{"constitution": c.constitution, "prompts": self.prompts_file, "model": self.policy(i, "cai")}
                | ({"critic_model": c.critic} if c.critic else {})
                | c.generate
                | {"run_id": run_id}
            )
        if stage.step == "sft":
            from .train.sft import SFTConfig

            data = self._export_sft(stage)
            return SFTConfig(**{"model": self.policy(i, stage.arm)} | c.sft | {"dataset": data, "run_id": run_id})
        if stage.step == "pairs":
            from .pairs import SampleConfig

            return SampleConfig(**{"prompts": self.prompts_file, "model": sft_model} | c.pairs | {"run_id": run_id})
        if stage.step == "label":
            from .feedback import LabelConfig

            return LabelConfig(**{"constitution": c.constitution, "model": c.judge} | c.label | {"run_id": run_id})
        labels = "human" if stage.arm == "rlhf" else Stage(i, "cai", "label", "").run_id(c.recipe_id)
        if stage.step == "rm":
            from .train.reward import RewardConfig

            return RewardConfig(**{"model": c.policy} | c.reward | {"labels": labels, "run_id": run_id})
        if stage.step == "rl":
            from .train import config_class

            settings = {"model": sft_model} | c.rl_config | {"run_id": run_id}
            if not config_class(c.rl).needs_reward_model:
                settings["labels"] = labels
            else:
                settings |= {"reward_model": Stage(i, stage.arm, "rm", "").run_id(c.recipe_id)}
                settings.setdefault("dataset", self.prompts_file)
            return config_class(c.rl)(**settings)
        if stage.step == "eval":
            from .evaluation import EvalConfig

            models = [f"base={c.policy}"] + ([f"previous={self.policy(i, 'cai')}"] if i > 1 else [])
            models += [f"{arm}={self.model_of(i, arm, self.last_step(arm))}" for arm in c.arms]
            return EvalConfig(
                **{"models": models, "constitution": c.constitution, "judge": c.judge} | c.eval | {"run_id": run_id}
            )
        raise RecipeError(f"unknown stage step {stage.step!r}")

    def _export_sft(self, stage: Stage) -> str:
        """The iteration's SFT data as a file in the recipe's folder: the final revisions for the CAI arm, the
        initial answers for the sft-baseline arm, both from this iteration's SL-CAI run."""
        from .store import Store

        path = self.job.path / f"i{stage.iteration}-sft-{stage.arm}.jsonl"
        if path.exists():
            return str(path)
        generation = Stage(stage.iteration, "cai", "generate", "").run_id(self.config.recipe_id)
        with Store.open(self.ws, wait_seconds=60) as store:
            store.ingest(self.ws.runs_dir)
            steps = store.final_steps(run_id=generation)
        column = "initial" if stage.arm == "sft-baseline" else "revision"
        rows = [
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
            for p, r in zip(steps["prompt"], steps[column], strict=True)
        ]
        if not rows:
            raise RecipeError(f"{generation} made no revisions to train on")
        self.job.write_input(path.stem, rows)
        return str(path)

    def label_pairs(self, stage: Stage):
        """The pairs this iteration's sampling stage made: the label stage judges those, not every pair stored."""
        from .records import Pair

        sampled = self.stage_job(Stage(stage.iteration, "cai", "pairs", ""))
        return [Pair(**row) for row in sampled.read("pairs")]


# --- running -------------------------------------------------------------------------------------------------


def _run_stage(recipe: Recipe, stage: Stage, config) -> JobFolder:
    """Run one stage's job to its end in this process, as `cai resume` would."""
    ws = recipe.ws
    if stage.kind.startswith("train-"):
        from .train import prepare_train_job, run_train_job

        return run_train_job(prepare_train_job(config, ws), ws)
    if stage.kind == "generate":
        from .critique import run_generation

        return run_generation(config, ws)
    if stage.kind == "pairs":
        from .pairs import run_sampling

        return run_sampling(config, ws)
    if stage.kind == "label":
        from .feedback import run_labelling

        return run_labelling(config, ws, pairs=recipe.label_pairs(stage))
    from .evaluation import run_evaluation

    return run_evaluation(config, ws)


def prepare_recipe(config: RecipeConfig, ws: Workspace) -> JobFolder:
    """Create (or find) the recipe's folder, with the recipe as YAML beside its outputs and its prompts copied in."""
    config.check()
    recipe = Recipe(config, ws)
    JobFolder.create(
        ws.runs_dir, config.recipe_id, {"kind": "recipe", "model": config.policy, "config": dataclasses.asdict(config)}
    )
    recipe_yaml = recipe.job.path / "recipe.yaml"
    if not recipe_yaml.exists():
        recipe_yaml.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), encoding="utf-8")
    recipe.write_prompts()
    return recipe.job


class StageFailed(RuntimeError):
    """A stage of a staged job ended without finishing; the message names the stage, its run and its reason."""


class StagedWork:
    """Stages as the job runner sees them: a batch is one stage, itself an ordinary job (its folder, progress,
    cancel, log) run to its end in this process. Rerunning skips the stages whose jobs are done and resumes the
    one that stopped; a stage that ends cancelled ends the whole job cancelled, one that fails ends it failed with
    the stage's reason. The recipe is one; the constitution A/B (`ab.py`) another. A subclass gives `stage_job`,
    `run_stage` and `stage_record` (the fields its spooled record of a finished stage adds)."""

    unit = "stage"
    engine = ""
    table = "stages"  # where each finished stage is recorded, in the staged job's own folder

    def __init__(self, job: JobFolder, stages: list, on_stage: Callable[[object, str], None] | None = None):
        self.job, self.stages, self.on_stage = job, stages, on_stage
        self.finished = {row["run_id"] for row in job.read(self.table) if row["status"] == "done"}
        self.running: JobFolder | None = None

    def stage_job(self, stage) -> JobFolder:
        raise NotImplementedError

    def run_stage(self, stage) -> JobFolder:
        raise NotImplementedError

    def stage_record(self, stage) -> dict:
        return {}

    def total(self) -> int:
        return len(self.stages)

    def done(self) -> int:
        return len(self.finished)

    def batches(self):
        for stage in self.stages:
            if self.stage_job(stage).run_id not in self.finished:
                yield stage

    def step(self, stage) -> None:
        stage_job = self.stage_job(stage)
        if _done(stage_job):  # finished by a run that was killed before it could say so
            self.finished.add(stage_job.run_id)
            return
        if self.on_stage:
            self.on_stage(stage, "running")
        began = now()
        self.running = stage_job
        try:
            stage_job = self.run_stage(stage)
        finally:
            self.running = None
        progress = stage_job.progress()
        row = self.stage_record(stage) | {"run_id": stage_job.run_id, "status": progress.status}
        self.job.append(self.table, [row | {"started_at": began, "ended_at": now()}])
        if self.on_stage:
            self.on_stage(stage, progress.status)
        if progress.status == "cancelled":
            raise Cancelled
        if progress.status != "done":
            raise StageFailed(f"{stage.name} ({stage_job.run_id}) {progress.status}: {progress.message}")
        self.finished.add(stage_job.run_id)

    def pass_on_cancel(self, stop: threading.Event) -> None:
        """Watch the job's cancel file and put one in the running stage's folder: the stage stops at its next
        batch boundary as it would on its own cancel, and keeps what it has done."""
        while not stop.wait(0.5):
            running = self.running
            # a stage's folder is made as it starts: until then there is nowhere to ask it to stop
            if running is not None and running.path.is_dir() and self.job.cancel_requested():
                running.request_cancel()

    def run(self, on_progress: Callable[[int, int], None] | None = None) -> JobFolder:
        """Run (or resume) every stage through the one job runner, passing a cancel on to the running stage."""
        stop = threading.Event()
        watcher = threading.Thread(target=self.pass_on_cancel, args=(stop,), daemon=True)
        watcher.start()
        try:
            return run_job(self.job, lambda: self, on_progress=on_progress)
        finally:
            stop.set()


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


def run_recipe(
    config: RecipeConfig,
    ws: Workspace,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    on_stage: Callable[[Stage, str], None] | None = None,
) -> JobFolder:
    """Run (or resume) the recipe to its end, a cancel or a failure, through the one job runner; returns the
    recipe's folder. Raises what ended a failed stage, as every job does."""
    prepare_recipe(config, ws)
    return RecipeWork(Recipe(config, ws), on_stage).run(on_progress)


def _done(job: JobFolder) -> bool:
    return (job.path / "run.json").exists() and job.progress().status == "done"


def stage_table(config: RecipeConfig, ws: Workspace) -> list[dict]:
    """Each stage with its run id, status, progress and times: what the Recipe page and `cai recipe status`
    show. Read from the stage jobs' own folders, so it is current while a stage runs."""
    from .train.monitor import alert_lines, monitor_metrics

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


def recipe_of(job: JobFolder) -> RecipeConfig:
    return RecipeConfig(**job.spec["config"])


def iteration_summary(config: RecipeConfig, ws: Workspace, store) -> pd.DataFrame:
    """Per iteration and model, what the recipe changed: harmlessness and helpfulness win rates against the base
    model (95% intervals; wrapper `none` where the evaluation has it), refusal on harmful prompts and over-refusal
    on benign ones; then its own arm's reward model's held-out accuracy on people's labels and its RL stage's last
    reward and KL (blank where the arm has no such stage). Empty until an iteration's evaluation has run."""
    from .eval_report import summarize

    recipe, rows = Recipe(config, ws), []
    for i in range(1, config.iterations + 1):
        evaluation = recipe.stage_job(Stage(i, "cai", "eval", "eval"))
        if not _done(evaluation):
            continue
        summary = summarize(store, evaluation.run_id)
        rates, refusals = summary.win_rates, summary.refusals
        wrapper = "none" if "none" in set(rates.get("wrapper", [])) else next(iter(rates.get("wrapper", [])), None)
        for model in sorted(set(summary.answers["model"]) - {"base"}):
            row: dict = {"iteration": i, "model": model}
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
            # the model's own arm's reward model and RL stage: the sft-baseline arm has neither, and shows blanks
            rm = store.train_metrics(Stage(i, model, "rm", "").run_id(config.recipe_id))
            rl = store.train_metrics(Stage(i, model, "rl", "").run_id(config.recipe_id), ["reward", "kl"])
            row |= {
                "RM accuracy": _last(rm, "accuracy_human"),
                "RL reward": _last(rl, "reward"),
                "RL KL": _last(rl, "kl"),
            }
            rows.append(row)
    return pd.DataFrame(rows)


def _last(metrics: pd.DataFrame, name: str) -> float | None:
    values = metrics[metrics.name == name]["value"] if not metrics.empty else []
    return round(float(values.iloc[-1]), 3) if len(values) else None


# --- the report ----------------------------------------------------------------------------------------------


def report_html(config: RecipeConfig, ws: Workspace, store, examples: int = 3) -> str:
    """The whole run as one HTML file that opens offline: the constitution and its version, the stages, what each
    iteration changed, the reward-hacking monitor's curves for every RL stage, and example answers before and
    after (SL-CAI's first answer and revision; the base model's answer and each arm's on the evaluation's
    prompts). Every piece of user text (prompts, answers, names) is escaped: it is shown as text."""
    import html

    from .eval_report import figure_html, report_page, table_html
    from .train.monitor import alert_lines, monitor_charts, monitor_metrics

    recipe, e = Recipe(config, ws), html.escape
    stages = pd.DataFrame(stage_table(config, ws))
    parts = [
        f"<p>Recipe <b>{e(config.name)}</b> ({e(config.recipe_id)}): {config.iterations} iteration(s), RL by "
        f"{e(config.rl)}, arms {e(', '.join(config.arms))}; policy {e(config.policy)}, judge {e(config.judge)}.</p>",
        f"<h2>Constitution</h2><p>{e(config.constitution)}, version {e(_constitution_versions(recipe, store))}</p>",
        table_html("Stages", stages[["iteration", "arm", "step", "run_id", "status", "seconds", "warnings"]]),
    ]
    summary = iteration_summary(config, ws, store)
    parts.append(
        table_html("What each iteration changed (win rates against the base, 95% intervals)", summary)
        if not summary.empty
        else "<h2>What each iteration changed</h2><p>No iteration has been evaluated yet.</p>"
    )
    parts.append("<h2>Reward-hacking monitor</h2>")
    rl_stages = [stage for stage in plan(config) if stage.step == "rl"]
    for stage in rl_stages:
        job = recipe.stage_job(stage)
        metrics = monitor_metrics(job)
        rules = job.spec["config"].get("monitor_rules", "") if (job.path / "run.json").exists() else ""
        figures = monitor_charts(metrics, rules)
        parts.append(f"<h3>{e(stage.name)}</h3>")
        parts += [f"<p><b>warning</b>: {e(line)}</p>" for line in alert_lines(metrics)]
        parts += [figure_html(figure) for figure in figures.values()] or ["<p>No monitor signals logged.</p>"]
    if not rl_stages:
        parts.append("<p>An SFT-only recipe has no RL stage to watch.</p>")
    parts.append(_examples_html(config, recipe, store, examples))
    return report_page(f"CAI recipe report: {config.name}", "".join(parts))


def _constitution_versions(recipe: Recipe, store) -> str:
    """The versions the SL-CAI stages ran under, as their traces recorded them; the file's own before any ran."""
    from .constitution import load_constitution

    versions = []
    for i in range(1, recipe.config.iterations + 1):
        steps = store.final_steps(run_id=Stage(i, "cai", "generate", "").run_id(recipe.config.recipe_id))
        versions += list(steps["constitution_version"])
    if versions:
        return ", ".join(dict.fromkeys(versions))
    return f"{load_constitution(recipe.config.constitution).version} (the file's; no SL-CAI stage has run yet)"


def _examples_html(config: RecipeConfig, recipe: Recipe, store, n: int) -> str:
    """A few prompts of the first SL-CAI stage with their first answer and final revision, and a few of the last
    evaluation's prompts with every model's answer (no jailbreak wrapper)."""
    from .eval_report import table_html

    parts = ["<h2>Examples: answers before and after</h2>"]
    steps = store.final_steps(run_id=Stage(1, "cai", "generate", "").run_id(config.recipe_id))
    if not steps.empty:
        parts.append(
            table_html(
                "SL-CAI, iteration 1: the first answer and the revision after critique",
                steps[["prompt", "initial", "revision"]].head(n),
            )
        )
    for i in range(config.iterations, 0, -1):
        evaluation = recipe.stage_job(Stage(i, "cai", "eval", "eval"))
        answers = store.eval_table("eval_answers", evaluation.run_id) if _done(evaluation) else pd.DataFrame()
        if answers.empty:
            continue
        answers = answers[answers.wrapper == "none"] if "none" in set(answers.wrapper) else answers
        wide = answers.pivot_table(index=["label", "prompt"], columns="model", values="answer", aggfunc="first")
        # a few of each label: harmful prompts, where refusing is right, and benign ones, where it is not
        shown = pd.concat(group.head(n) for _, group in wide.reset_index().groupby("label"))
        shown.columns.name = None
        parts.append(table_html(f"Iteration {i}'s evaluation: the base model and each arm on the same prompts", shown))
        break
    if len(parts) == 1:
        parts.append("<p>No answers yet.</p>")
    return "".join(parts)
