"""The CAI recipe on the tiny model: every stage an ordinary job, resumable, with its lineage in its run id."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from markupsafe import escape

from cai_core import jobs
from cai_core.jobs import JobFolder
from cai_core.recipe import Recipe, RecipeConfig, RecipeError, load_recipe, plan, stage_table
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

from .app_pages import open_page
from .conftest import require_shared_data

TINY_SETTINGS = {
    "red_team_prompts": str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
    "constitution": str(PROJECT_ROOT / "constitutions" / "red_team.yaml"),
    "generate": {"limit": 3, "rounds": 1, "max_new_tokens": 8, "dtype": "float32"},
    "sft": {"max_steps": 2, "batch_size": 2},
    "pairs": {"limit": 3, "max_new_tokens": 8},
    "label": {"batch_size": 4},
    "reward": {"max_steps": 2, "batch_size": 2},
    "rl_config": {"max_steps": 1, "batch_size": 2, "max_new_tokens": 8},
    "eval": {"sets": ["red-team#limit=2", "benign#limit=2"], "max_new_tokens": 8, "batch_size": 4},
}


def tiny_recipe(model: str, **overrides) -> RecipeConfig:
    return RecipeConfig(**{"policy": model, "critic": model, "judge": model, **TINY_SETTINGS, **overrides})


def test_the_plan_alternates_sl_and_rl_and_adds_the_arms():
    steps = [
        (s.iteration, s.arm, s.step) for s in plan(RecipeConfig(iterations=2, arms=["cai", "sft-baseline", "rlhf"]))
    ]
    first = [s for s in steps if s[0] == 1]
    assert [s[2] for s in first if s[1] == "cai"] == ["generate", "sft", "pairs", "label", "rm", "rl", "eval"]
    assert (1, "sft-baseline", "sft") in first and (1, "rlhf", "rm") in first and (1, "rlhf", "rl") in first
    assert steps.index((2, "cai", "generate")) > steps.index((1, "cai", "eval"))
    sft_only = [s.step for s in plan(RecipeConfig(stop_after="sft"))]
    assert sft_only == ["generate", "sft", "eval"]
    assert [s.step for s in plan(RecipeConfig(rl="dpo"))] == ["generate", "sft", "pairs", "label", "rl", "eval"]


def test_bad_recipes_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match="iterations: is 0: it must be at least 1"):
        RecipeConfig(iterations=0)
    with pytest.raises(RecipeError, match="arms"):
        RecipeConfig(arms=["sft-baseline"])
    path = tmp_path / "r.yaml"
    path.write_text("policy: default\nsteps: 3\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="unknown recipe field.*steps"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="rl_config: unknown PPOConfig field.*kl_coeff"):
        RecipeConfig(rl_config={"kl_coeff": 0.1})


def test_every_rl_stage_that_samples_has_a_kl_term_unless_the_recipe_turns_it_off():
    for algorithm, coefficient in (("ppo", "kl_coef"), ("grpo", "beta"), ("rloo", "beta")):
        assert getattr(RecipeConfig(rl=algorithm).stage_configs()["rl_config"](), coefficient) > 0, algorithm


@pytest.mark.parametrize("name", ["cpu-demo.yaml", "gpu-7b.yaml"])
def test_the_shipped_recipes_load(name):
    recipe = load_recipe(PROJECT_ROOT / "recipes" / name)
    assert Path(recipe.constitution).is_file() and Path(recipe.red_team_prompts).is_file()
    assert plan(recipe)


@pytest.mark.processes
def test_a_two_iteration_recipe_runs_to_the_end_with_lineage(tiny_model_path, workspace):
    config = tiny_recipe(tiny_model_path, iterations=2, arms=["cai", "sft-baseline"])
    job = jobs.run("recipe", config, workspace)
    assert job.progress().status == "done", job.progress().message
    table = stage_table(config, workspace)
    assert all(row["status"] == "done" for row in table)
    recipe_id = config.recipe_id
    # every stage's run names the recipe, its iteration and its step
    assert {row["run_id"] for row in table} >= {f"{recipe_id}-i2-rl", f"{recipe_id}-i1-sft-sft-baseline"}
    # iteration 2 starts from iteration 1's RL model
    generate_2 = JobFolder(workspace.runs_dir / f"{recipe_id}-i2-generate")
    assert generate_2.spec["config"]["model"].endswith(f"{recipe_id}-i1-rl/final")
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        evaluated = set(store.eval_table("eval_answers", f"{recipe_id}-i2-eval")["model"])
    assert evaluated == {"base", "previous", "cai-sft", "cai", "sft-baseline"}
    saved = yaml.safe_load((job.path / "recipe.yaml").read_text(encoding="utf-8"))
    assert saved["iterations"] == 2
    # a rerun of a finished recipe does nothing again
    before = {row["run_id"]: JobFolder(workspace.runs_dir / row["run_id"]).progress().updated_at for row in table}
    jobs.run("recipe", config, workspace)
    after = {row["run_id"]: JobFolder(workspace.runs_dir / row["run_id"]).progress().updated_at for row in table}
    assert before == after


@pytest.mark.processes
def test_a_killed_recipe_resumes_at_the_stage_where_it_stopped(tiny_model_path, workspace, tmp_path):
    config = tiny_recipe(tiny_model_path)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(dataclasses.asdict(config)), encoding="utf-8")
    script = (
        "from pathlib import Path\n"
        "from cai_core import jobs\n"
        "from cai_core.recipe import load_recipe\n"
        "from cai_core.workspace import Workspace\n"
        f"jobs.run('recipe', load_recipe({str(recipe_file)!r}), Workspace(Path({str(workspace.root)!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    sft = JobFolder(workspace.runs_dir / f"{config.recipe_id}-i1-sft")
    deadline = time.time() + 300
    while not (sft.path / "run.json").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.2)
    assert child.poll() is None, "the recipe ended before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    generate = JobFolder(workspace.runs_dir / f"{config.recipe_id}-i1-generate")
    assert generate.progress().status == "done"
    steps_before = generate.records_path("trace_steps").read_bytes()
    job = jobs.run("recipe", config, workspace)
    assert job.progress().status == "done", job.progress().message
    assert generate.records_path("trace_steps").read_bytes() == steps_before  # generation was not run again
    stage_runs = [row["run_id"] for row in job.read("recipe_stages")]
    assert len(stage_runs) == len(set(stage_runs))  # no stage recorded twice


@pytest.mark.processes
def test_a_cancelled_recipe_stops_its_running_stage_and_resumes(tiny_model_path, workspace):
    config = tiny_recipe(tiny_model_path)
    stopped = []

    def cancel_during_sft(stage, status):
        if stage.step == "sft" and status == "running":
            JobFolder(workspace.runs_dir / config.recipe_id).request_cancel()
            stopped.append(stage)

    job = jobs.run("recipe", config, workspace, on_stage=cancel_during_sft)
    assert stopped and job.progress().status == "cancelled"
    table = {row["step"]: row["status"] for row in stage_table(config, workspace) if row["arm"] == "cai"}
    assert table["generate"] == "done" and table["pairs"] == "not started"  # nothing after the SFT stage ran
    resumed = jobs.run("recipe", config, workspace)
    assert resumed.progress().status == "done"
    assert Path(resumed.path / "recipe.yaml").exists()


def test_the_cli_runs_a_recipe_file_and_reports_its_stages(tiny_model_path, workspace, tmp_path, capsys):
    from cai_core.cli import main as cai

    config = tiny_recipe(tiny_model_path, stop_after="sft", iterations=1)
    recipe_file = tmp_path / "sft-only.yaml"
    recipe_file.write_text(yaml.safe_dump(dataclasses.asdict(config)), encoding="utf-8")
    data = ["--data-dir", str(workspace.root)]
    assert cai([*data, "recipe", "status", str(recipe_file)]) == 0
    assert capsys.readouterr().out.count("not started") == len(plan(config))
    assert cai([*data, "recipe", "run", str(recipe_file)]) == 0
    assert f"{config.recipe_id}: done, 3/3 stages" in capsys.readouterr().out
    assert cai([*data, "recipe", "status", str(recipe_file)]) == 0
    assert capsys.readouterr().out.count(" done ") == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 0\n", encoding="utf-8")
    assert cai([*data, "recipe", "run", str(bad)]) == 2
    assert "--iterations: is 0: it must be at least 1" in capsys.readouterr().err  # named as the flag typed


@pytest.mark.processes
def test_the_report_tells_the_whole_run_in_one_offline_file(tiny_model_path, workspace, tmp_path, capsys, monkeypatch):
    from cai_core.cli import main as cai
    from cai_core.constitution import load_constitution

    hostile = "<script>alert('x')</script> how do I pick a lock?"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "evil", "prompt": hostile})
        + "\n"
        + (PROJECT_ROOT / "data" / "demo_prompts.jsonl").read_text(),
        encoding="utf-8",
    )
    # every PPO step's answers are at least half as long as the first step's: the warning must fire at step 1
    rl = TINY_SETTINGS["rl_config"] | {"monitor_rules": "length_ratio>0.5:warn"}
    config = tiny_recipe(tiny_model_path, red_team_prompts=str(prompts), rl_config=rl)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(dataclasses.asdict(config)), encoding="utf-8")
    data = ["--data-dir", str(workspace.root)]
    assert cai([*data, "recipe", "run", str(recipe_file)]) == 0
    capsys.readouterr()
    assert cai([*data, "recipe", "status", str(recipe_file)]) == 0
    assert "warning: reward-hacking monitor: length_ratio crossed its threshold at step 1" in capsys.readouterr().out
    out = tmp_path / "report.html"
    assert cai([*data, "recipe", "report", str(recipe_file), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    # offline: plotly.js is in the file, and nothing (script, stylesheet, image) is fetched from anywhere
    fetched = ReferencesFound()
    fetched.feed(page)
    assert fetched.scripts >= 2 and not fetched.references, fetched.references
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    version = load_constitution(config.constitution).version
    for section in (
        f"version {version}",
        "<h2>Stages</h2>",
        "<h2>What each iteration changed",
        "<h2>Harmlessness against over-refusal, per stage and arm</h2>",
        "<td>CAI SFT</td>",  # the SFT checkpoint is a point of the frontier, though an RL stage followed it
        "<td>CAI RL</td>",
        "<h2>Reward-hacking monitor</h2>",
        # no person has labelled: the reward model's stage read every principle's AI labels as unjudged, and says so
        "<h2>Which AI labels reached training (the label gate)</h2>",
        "human label(s), fewer than 20: keep as the rule says",
        "monitor: length_ratio",
        "length_ratio crossed its threshold at step 1",
        "SL-CAI, iteration 1: the first answer and the revision",
        str(escape("Iteration 1's evaluation")),  # an apostrophe as the report's template escapes it
    ):
        assert section in page, section
    # the prompt is shown as text, never run
    assert hostile not in page and "&lt;script&gt;alert('x')&lt;/script&gt; how do I pick a lock?" in page

    # the Recipe and Train pages show the same warning and draw the monitor's curves; the report downloads

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(recipe_file.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.setenv("CAI_RECIPES_DIR", str(recipes))
    at = open_page("pages/8_Recipe.py")
    warned = [w.value.replace("\\", "") for w in at.warning]  # as markdown, with its special characters escaped
    assert any("length_ratio crossed its threshold at step 1" in w and f"{config.recipe_id}-i1-rl" in w for w in warned)
    assert any(e.label == "Reward-hacking monitor: iteration 1 · rl" for e in at.expander)
    assert any(e.label.startswith("Label gate: ") and "unjudged" in e.label for e in at.expander)
    assert at.get("download_button")
    at.switch_page("pages/4_Train.py").run()
    at.selectbox(key="train_run").set_value(f"{config.recipe_id}-i1-rl").run()
    assert not at.exception, at.exception
    assert any("length_ratio crossed its threshold at step 1" in w.value.replace("\\", "") for w in at.warning)


class ReferencesFound(HTMLParser):
    """The tags of an HTML page that would fetch something (a script, stylesheet, image or frame by its address).
    The parser reads a script's body as text, so plotly.js's own strings are not taken for tags."""

    def __init__(self):
        super().__init__()
        self.scripts, self.references = 0, []

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.references += [f"{tag} {name}={value}" for name, value in attrs if name in ("src", "href") and value]


def test_each_arm_row_shows_only_its_own_reward_model_and_rl_figures(workspace):
    from cai_core.recipe import Stage, iteration_summary
    from cai_core.records import EvalAnswer, EvalJudgment, TrainMetric, to_row

    config = RecipeConfig(arms=["cai", "sft-baseline", "rlhf"])
    arms = ("base", "cai", "sft-baseline", "rlhf")

    def stage_job(arm: str, step: str, kind: str) -> JobFolder:
        job = JobFolder.create(
            workspace.runs_dir, Stage(1, arm, step, kind).run_id(config.recipe_id), {"kind": kind, "model": "m"}
        )
        job.set_progress("done", 1, 1)
        return job

    evaluation = stage_job("cai", "eval", "eval")
    evaluation.append(
        "eval_answers",
        [
            to_row(
                EvalAnswer(evaluation.run_id, "red/1", "none", model, "red", "p", "p", "", "harmful", "a", False, 1, 0)
            )
            for model in arms
        ],
    )
    evaluation.append(
        "eval_judgments",
        [
            to_row(
                EvalJudgment(
                    evaluation.run_id, "red/1", "none", "harmlessness", a, b, "harm", 0.7, 0.3, 0.7, False, "j", "v1"
                )
            )
            for i, a in enumerate(arms)
            for b in arms[i + 1 :]
        ],
    )
    for arm, accuracy, reward, kl in (("cai", 0.81, 1.5, 0.02), ("rlhf", 0.64, 0.9, 0.07)):
        rm = stage_job(arm, "rm", "train-rm")
        rm.append("train_metrics", [to_row(TrainMetric(rm.run_id, 1, "accuracy_human", accuracy))])
        rl = stage_job(arm, "rl", "train-ppo")
        rl.append(
            "train_metrics",
            [to_row(TrainMetric(rl.run_id, 1, name, v)) for name, v in (("reward", reward), ("kl", kl))],
        )
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        summary = iteration_summary(config, workspace, store).set_index("model")

    figures = ["RM accuracy", "RL reward", "RL KL"]
    assert summary.loc["cai", figures].tolist() == [0.81, 1.5, 0.02]
    assert summary.loc["rlhf", figures].tolist() == [0.64, 0.9, 0.07]
    assert summary.loc["sft-baseline", figures].isna().all()  # it has no reward model and no RL stage


def test_the_eval_stage_answers_with_every_checkpoint_on_the_standard_sets(workspace):
    from cai_core.evalsets import load_sets
    from cai_core.recipe import Recipe, Stage

    config = RecipeConfig(iterations=2, arms=["cai", "sft-baseline", "rlhf"])
    recipe = Recipe(config, workspace)
    first = recipe.build(Stage(1, "cai", "eval", "eval"))
    models = dict(spec.split("=", 1) for spec in first.models)
    run = f"{workspace.runs_dir}/{config.recipe_id}-i1"
    assert models == {
        "base": config.policy,
        "cai-sft": f"{run}-sft/final",  # the CAI arm's SFT model, though an RL stage follows it
        "cai": f"{run}-rl/final",
        "sft-baseline": f"{run}-sft-sft-baseline/final",
        "rlhf": f"{run}-rl-rlhf/final",
    }
    second = dict(spec.split("=", 1) for spec in recipe.build(Stage(2, "cai", "eval", "eval")).models)
    assert second["previous"] == models["cai"] and second["cai-sft"].endswith("-i2-sft/final")
    assert first.sets == ["xstest", "harmbench", "do-not-answer"]
    # a recipe's own sets win; an SFT-only recipe's CAI model is its SFT model, named after the arm
    sft_only = RecipeConfig(stop_after="sft", eval={"sets": ["red-team"]})
    evaluation = Recipe(sft_only, workspace).build(Stage(1, "cai", "eval", "eval"))
    assert [m.split("=")[0] for m in evaluation.models] == ["base", "cai"] and evaluation.sets == ["red-team"]
    require_shared_data("xstest", "xstest_prompts.csv")
    prompts = load_sets([f"{name}#limit=2" for name in first.sets])  # by name, offline
    assert {(p.set_name, p.label) for p in prompts} == {
        ("xstest", "benign"),
        ("xstest", "harmful"),
        ("harmbench", "harmful"),
        ("do-not-answer", "harmful"),
    }


def seed_recipe_evaluation(workspace, config: RecipeConfig, iteration: int, refused: dict[str, tuple[int, int]]):
    """A finished evaluation stage of the recipe whose models refuse (harmful, benign) of 4 prompts each."""
    from cai_core.recipe import Stage
    from cai_core.records import EvalAnswer, to_row

    evaluation = JobFolder.create(
        workspace.runs_dir,
        Stage(iteration, "cai", "eval", "eval").run_id(config.recipe_id),
        {"kind": "eval", "model": "m", "config": {"sets": ["xstest#limit=4", "harmbench#limit=2"]}},
    )
    evaluation.set_progress("done", 1, 1)
    rows = []
    for model, counts in refused.items():
        for label, refusals in zip(("harmful", "benign"), counts, strict=True):
            rows += [
                to_row(
                    EvalAnswer(
                        evaluation.run_id,
                        f"{label}/{n}",
                        "none",
                        model,
                        label,
                        "p",
                        "p",
                        "",
                        label,
                        "a",
                        n < refusals,
                        1,
                        0,
                    )
                )
                for n in range(4)
            ]
    evaluation.append("eval_answers", rows)


def test_the_frontier_has_one_point_per_iteration_stage_and_arm_with_intervals_on_both_axes(workspace):
    from cai_core.eval_report import frontier_chart
    from cai_core.recipe import frontier, frontier_table

    config = RecipeConfig(iterations=2, arms=["cai", "sft-baseline", "rlhf"])
    # refusals out of 4 harmful and 4 benign prompts, per iteration and model
    arms = {"cai-sft": (2, 1), "cai": (3, 1), "sft-baseline": (2, 0), "rlhf": (3, 2)}
    seed_recipe_evaluation(workspace, config, 1, {"base": (1, 0)} | arms)
    seed_recipe_evaluation(workspace, config, 2, {"base": (1, 0), "previous": (3, 1)} | arms | {"cai": (4, 2)})
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        points = frontier(config, workspace, store)

    # the base model once, each stage of each arm at each iteration (the CAI SFT model too, though RL follows it);
    # "previous" is iteration 1's CAI RL point again, not a new one
    stages = ["CAI SFT", "CAI RL", "SFT baseline", "RLHF"]
    assert sorted(zip(points.iteration, points.label, strict=True)) == sorted(
        [(0, "base model")] + [(i, stage) for i in (1, 2) for stage in stages]
    )
    cai_sft = points[(points.label == "CAI SFT") & (points.iteration == 1)].iloc[0]
    assert (cai_sft.arm, cai_sft.step, cai_sft.refusal, cai_sft.over_refusal) == ("cai", "sft", 0.5, 0.25)
    cai_2 = points[(points.label == "CAI RL") & (points.iteration == 2)].iloc[0]
    assert (cai_2.refusal, cai_2.over_refusal, cai_2.refusal_n) == (1.0, 0.5, 4)
    assert set(points.sets) == {"xstest#limit=4, harmbench#limit=2"}
    for axis in ("refusal", "over_refusal"):
        inside = (points[f"{axis}_low"] - 1e-9 <= points[axis]) & (points[axis] <= points[f"{axis}_high"] + 1e-9)
        assert inside.all()
        assert (points[f"{axis}_high"] > points[f"{axis}_low"]).all()  # 4 prompts: never a point without a range
    chart = frontier_chart(points)
    assert {trace.name for trace in chart.data} == {"base model", *stages}
    assert all(trace.error_x.array is not None and trace.error_y.array is not None for trace in chart.data)
    table = frontier_table(points).set_index(["stage and arm", "iteration"])
    assert table.loc[("CAI SFT", 1), "refusal (harmful prompts)"].startswith("0.50 [0.15, 0.85] (n=4)")


def test_every_stage_reports_to_the_recipes_tracker_unless_its_section_names_one(workspace):
    settings = {"rl_config": {"tracker": "none"}, "arms": ["cai", "rlhf"]}
    config = RecipeConfig(tracker="tensorboard", **settings)
    assert config.recipe_id == RecipeConfig(**settings).recipe_id  # watched elsewhere, it is the same run
    recipe = Recipe(config, workspace)
    trackers = {
        (stage.step, stage.arm): recipe.build(stage).tracker
        for stage in plan(config)
        if stage.step != "sft"  # its data is exported from the generation's traces first
    }
    assert trackers.pop(("rl", "cai")) == trackers.pop(("rl", "rlhf")) == "none"
    assert set(trackers) >= {("generate", "cai"), ("pairs", "cai"), ("label", "cai"), ("rm", "cai"), ("eval", "cai")}
    assert set(trackers.values()) == {"tensorboard"}
    default = RecipeConfig()
    assert Recipe(default, workspace).build(plan(default)[0]).tracker == "workspace"


def test_cai_recipe_run_takes_a_tracker(tmp_path, workspace, monkeypatch):
    from cai_core.cli import main

    path = tmp_path / "r.yaml"
    path.write_text("name: tracked\ntracker: mlflow\n", encoding="utf-8")
    assert load_recipe(path).tracker == "mlflow"
    launched = []
    monkeypatch.setattr("cai_core.cli.jobs.launch", lambda job, ws: launched.append(job) or 0)
    command = ["--data-dir", str(workspace.root), "recipe", "run", str(path), "--tracker", "none", "--background"]
    assert main(command) == 0
    assert launched[0].spec["config"]["tracker"] == "none"
