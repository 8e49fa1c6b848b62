"""The recipe as written and as planned: its config (a YAML file), its stages, and what each stage is asked to do
given what the stages before it made (`Recipe.build`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import CheckedConfig, ConfigError, load_config_file
from ..job_folder import identity_settings
from ..jobs import JobFolder, run_id_for, training_kind_name
from ..tracking import TrackerChoice, tracker_field
from ..workspace import PROJECT_ROOT, Workspace

ARMS = ("cai", "sft-baseline", "rlhf")
RL_KINDS = ("ppo", "dpo", "grpo", "rloo")


class RecipeError(ConfigError):
    """A recipe that cannot run as written; the message names the field."""


@dataclass
class RecipeConfig(CheckedConfig):
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
    iterations: int = field(default=1, metadata={"help": "SL-CAI then RL-CAI, this many times.", "min": 1})
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
    eval: dict = field(
        default_factory=dict,
        metadata={
            "help": "EvalConfig fields for every evaluation; its sets are the standard sets by name (xstest's safe "
            "and unsafe halves, harmbench, do-not-answer) unless given."
        },
    )
    tracker: TrackerChoice = tracker_field()  # the recipe's and every stage's, unless the stage's section names one

    def check(self) -> None:
        try:
            super().check()
        except ConfigError as exc:
            raise RecipeError(exc.problem, exc.field) from None
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
        from ..critique import GenerateConfig
        from ..evaluation import EvalConfig
        from ..feedback import LabelConfig
        from ..pairs import SampleConfig
        from ..train import config_class

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
        return run_id_for("recipe", identity_settings(dataclasses.asdict(self)))


PATH_FIELDS = ("constitution", "red_team_prompts", "helpful_prompts")


def load_recipe(path: str | Path) -> RecipeConfig:
    """A recipe YAML file as a config; unknown fields are refused with their names. Relative paths in it are read
    from the project folder, as the shipped recipes are written, wherever the command runs."""
    recipe = load_config_file(RecipeConfig, path, "recipe", error=RecipeError)
    relative = {name: getattr(recipe, name) for name in PATH_FIELDS if getattr(recipe, name)}
    return dataclasses.replace(
        recipe, **{name: str(PROJECT_ROOT / value) for name, value in relative.items() if not Path(value).is_absolute()}
    )


# --- the plan ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A model an iteration's evaluation answers with: the base, the previous iteration's, or one training stage's
    (the CAI arm's SFT model as well as its RL model)."""

    name: str  # its name in the evaluation
    arm: str  # base, previous, or one of ARMS
    step: str  # the training step that made it (sft, rl); "" for the base and previous models
    model: str

    @property
    def label(self) -> str:
        """How a chart or table names it: the arm and its stage (the sft-baseline arm is SFT, rlhf is RL)."""
        if not self.step:
            return f"{self.arm} model"
        return {"cai": f"CAI {self.step.upper()}", "sft-baseline": "SFT baseline", "rlhf": "RLHF"}[self.arm]


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
        stages.append(Stage(i, "cai", "sft", training_kind_name("sft")))
        if "sft-baseline" in recipe.arms:
            stages.append(Stage(i, "sft-baseline", "sft", training_kind_name("sft")))
        if recipe.stop_after == "rl":
            stages.append(Stage(i, "cai", "pairs", "pairs"))
            stages.append(Stage(i, "cai", "label", "label"))
            if recipe.stage_configs()["rl_config"].needs_reward_model:
                stages.append(Stage(i, "cai", "rm", training_kind_name("rm")))
            stages.append(Stage(i, "cai", "rl", training_kind_name(recipe.rl)))
            if "rlhf" in recipe.arms:
                if recipe.stage_configs()["rl_config"].needs_reward_model:
                    stages.append(Stage(i, "rlhf", "rm", training_kind_name("rm")))
                stages.append(Stage(i, "rlhf", "rl", training_kind_name(recipe.rl)))
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

    def checkpoints(self, iteration: int) -> list[Checkpoint]:
        """Every model the iteration's evaluation answers with: the base, the iteration before's (from the second
        on), and each arm's trained models. An arm's last model is named after the arm (the evaluations of earlier
        runs read the same); the CAI arm's SFT model, when an RL stage follows it, is `cai-sft`."""
        c, i = self.config, iteration
        found = [Checkpoint("base", "base", "", c.policy)]
        if i > 1:
            found.append(Checkpoint("previous", "previous", "", self.policy(i, "cai")))
        for arm in c.arms:
            last = self.last_step(arm)
            if arm == "cai" and last == "rl":
                found.append(Checkpoint("cai-sft", arm, "sft", self.model_of(i, arm, "sft")))
            found.append(Checkpoint(arm, arm, last, self.model_of(i, arm, last)))
        return found

    @property
    def prompts_file(self) -> str:
        return str(self.job.path / "prompts.jsonl")

    def write_prompts(self) -> None:
        """The red-team and helpful prompts as one file, copied once: every stage reads the same prompts even if
        the sources change."""
        from ..prompts import load_prompts

        if Path(self.prompts_file).exists():
            return
        rows = []
        for source, category in ((self.config.red_team_prompts, "red-team"), (self.config.helpful_prompts, "helpful")):
            if source:
                for p in load_prompts(source).prompts:
                    rows.append({"id": p.id, "prompt": p.prompt, "category": p.category or category})
        self.job.write_input("prompts", rows)

    def build(self, stage: Stage):
        """The stage's config, reporting to the recipe's tracker unless the recipe leaves it to the workspace or the
        stage's own section names one."""
        config = self._stage_config(stage)
        if self.config.tracker == "workspace" or config.tracker != "workspace":
            return config
        return dataclasses.replace(config, tracker=self.config.tracker)

    def _stage_config(self, stage: Stage):
        """The stage's config, from the recipe's settings for that step and the runs before it."""
        c, i = self.config, stage.iteration
        run_id = stage.run_id(c.recipe_id)
        sft_model = self.model_of(i, "cai", "sft")
        if stage.step == "generate":
            from ..critique import GenerateConfig

            return GenerateConfig(
                **{"constitution": c.constitution, "prompts": self.prompts_file, "model": self.policy(i, "cai")}
                | ({"critic_model": c.critic} if c.critic else {})
                | c.generate
                | {"run_id": run_id}
            )
        if stage.step == "sft":
            from ..train.sft import SFTConfig

            data = self._export_sft(stage)
            return SFTConfig(**{"model": self.policy(i, stage.arm)} | c.sft | {"dataset": data, "run_id": run_id})
        if stage.step == "pairs":
            from ..pairs import SampleConfig

            return SampleConfig(**{"prompts": self.prompts_file, "model": sft_model} | c.pairs | {"run_id": run_id})
        if stage.step == "label":
            from ..feedback import LabelConfig

            return LabelConfig(**{"constitution": c.constitution, "model": c.judge} | c.label | {"run_id": run_id})
        labels = "human" if stage.arm == "rlhf" else Stage(i, "cai", "label", "").run_id(c.recipe_id)
        if stage.step == "rm":
            from ..train.reward import RewardConfig

            return RewardConfig(**{"model": c.policy} | c.reward | {"labels": labels, "run_id": run_id})
        if stage.step == "rl":
            from ..train import config_class

            settings = {"model": sft_model} | c.rl_config | {"run_id": run_id}
            if not config_class(c.rl).needs_reward_model:
                settings["labels"] = labels
            else:
                settings |= {"reward_model": Stage(i, stage.arm, "rm", "").run_id(c.recipe_id)}
                settings.setdefault("dataset", self.prompts_file)
            return config_class(c.rl)(**settings)
        if stage.step == "eval":
            from ..evalsets import STANDARD_SETS
            from ..evaluation import EvalConfig

            models = [f"{checkpoint.name}={checkpoint.model}" for checkpoint in self.checkpoints(i)]
            settings = {"models": models, "sets": list(STANDARD_SETS), "constitution": c.constitution, "judge": c.judge}
            return EvalConfig(**settings | c.eval | {"run_id": run_id})
        raise RecipeError(f"unknown stage step {stage.step!r}")

    def _export_sft(self, stage: Stage) -> str:
        """The iteration's SFT data as a file in the recipe's folder: the final revisions for the CAI arm, the
        initial answers for the sft-baseline arm, both from this iteration's SL-CAI run."""
        from ..store import Store

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
        from ..records import Pair

        sampled = self.stage_job(Stage(stage.iteration, "cai", "pairs", ""))
        return [Pair(**row) for row in sampled.read("pairs")]


def recipe_of(job: JobFolder) -> RecipeConfig:
    return RecipeConfig(**job.spec["config"])
