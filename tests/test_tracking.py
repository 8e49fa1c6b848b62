"""Experiment tracking: a run's numbers, config, constitution, parents and monitor warnings reach the tracker's own
files (TensorBoard's events, W&B's offline run, MLflow's file store, trackio's local database), and nothing else."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from cai_core.job_folder import JobFolder, identity_settings
from cai_core.job_runner import run_job
from cai_core.tracking import (
    PROJECT,
    TrackingError,
    open_tracker,
    parent_runs,
    record_input_runs,
    resolve,
    tracking_record,
)
from cai_core.train.context import RunContext
from cai_core.train.sft import SFTConfig
from cai_core.workspace import PROJECT_ROOT, Workspace

CONSTITUTION = {"name": "harmless", "version": "v1abc", "content": "name: harmless"}


def make_job(tmp_path, run_id: str, tracker: str, **config) -> JobFolder:
    spec = {"kind": "train-sft", "model": "default", "config": {"tracker": tracker, **config}}
    return JobFolder.create(tmp_path / "runs", run_id, {**spec, "constitution": CONSTITUTION})


def tensorboard_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return events


def text_of(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_a_training_run_reports_its_curve_constitution_parents_and_warning_to_tensorboard(tmp_path):
    ws = Workspace(tmp_path)
    make_job(tmp_path, "recipe-ab12-i1-sft", "none")  # the recipe's earlier stage, whose model this run trains
    job = make_job(tmp_path, "recipe-ab12-i1-rl", "tensorboard", model="recipe-ab12-i1-sft")
    ctx = RunContext(job, SFTConfig(), ws)
    ctx.log_metrics(1, {"loss": 2.5})
    ctx.warning = "warning: reward rises while length does"
    ctx.log_metrics(2, {"loss": 1.5, "epoch": 0.5})
    ctx.end_tracking("done")

    events = tensorboard_events(tmp_path / "tensorboard" / job.run_id)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 1.5)]
    assert text_of(events, "constitution_version") == "v1abc"
    assert text_of(events, "parent_runs") == "recipe-ab12,recipe-ab12-i1-sft"
    assert text_of(events, "monitor_warning") == "warning: reward rises while length does"
    record = tracking_record(job)
    assert record["tracker"] == "tensorboard" and "tensorboard --logdir" in record["open_with"]


def test_a_run_without_a_tracker_writes_no_tracker_files(tmp_path):
    job = make_job(tmp_path, "quiet", "none")
    ctx = RunContext(job, SFTConfig(), Workspace(tmp_path))
    ctx.log_metrics(1, {"loss": 1.0})
    assert tracking_record(job) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


class CountingWork:
    unit, engine = "label", ""

    def __init__(self):
        self.count = 0

    def total(self):
        return 3

    def done(self):
        return self.count

    def batches(self):
        return range(self.count, 3)

    def step(self, batch):
        self.count += 1


def test_a_job_under_the_runner_reports_its_progress_to_the_workspace_default(tmp_path):
    (tmp_path / "tracking.yaml").write_text("tracker: tensorboard\n")
    job = make_job(tmp_path, "label-1", "workspace")
    run_job(job, CountingWork)
    events = tensorboard_events(tmp_path / "tensorboard" / "label-1")
    assert [e.value for e in events.Scalars("done")] == [1, 2, 3]
    assert text_of(events, "constitution") == "harmless"


def test_wandb_runs_offline_into_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    job = make_job(tmp_path, "sft-w", "wandb", learning_rate=0.1)
    tracker = open_tracker(job, tmp_path)
    tracker.log(1, {"loss": 0.25})
    tracker.finish("done")
    (run,) = (tmp_path / "wandb").glob("offline-run-*-sft-w/run-sft-w.wandb")
    # this wandb has no Python reader for its run file: its records hold the config and history as JSON text.
    # wandb's own service process writes the file; under load its last records land a moment after finish()
    deadline, wanted = time.monotonic() + 30, (b"constitution_version", b"v1abc", b"0.25")
    while not all(w in (written := run.read_bytes()) for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(w in written for w in wanted), written[:200]
    assert tracking_record(job)["link"] is None  # offline: nothing to open until the operator syncs it


def test_mlflow_writes_a_local_file_store(tmp_path):
    import mlflow

    job = make_job(tmp_path, "sft-m", "mlflow", learning_rate=0.1)
    tracker = open_tracker(job, tmp_path)
    tracker.log(3, {"loss": 0.75})
    tracker.finish("done")
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    run = client.get_run(tracking_record(job)["mlflow_run_id"])
    assert run.data.metrics["loss"] == 0.75 and run.data.params["learning_rate"] == "0.1"
    assert run.data.tags["constitution_version"] == "v1abc" and run.info.status == "FINISHED"
    assert (tmp_path / "mlruns").is_dir()


TRACKIO_RUN = """
import sys
from pathlib import Path
from cai_core.job_folder import JobFolder
from cai_core.train.context import RunContext
from cai_core.train.sft import SFTConfig
from cai_core.workspace import PROJECT_ROOT, Workspace
ctx = RunContext(JobFolder(sys.argv[1]), SFTConfig(), Workspace(Path(sys.argv[1]).parents[1]))
ctx.log_metrics(1, {"loss": 0.5})
ctx.warning = "warning: reward hacking"
ctx.log_metrics(2, {"loss": 0.25})
ctx.end_tracking("done")
"""


def test_trackio_keeps_the_run_in_the_workspaces_local_database(tmp_path):
    job = make_job(tmp_path, "sft-t", "trackio", learning_rate=0.1)
    # trackio reads TRACKIO_DIR once, when first imported: a process of its own, with none set, sees this workspace
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"} | {"PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", TRACKIO_RUN, str(job.path)], env=env, check=True, timeout=300)

    database = sqlite3.connect(tmp_path / "trackio" / f"{PROJECT}.db")
    steps = database.execute("SELECT step, metrics FROM metrics WHERE run_name = 'sft-t' ORDER BY step").fetchall()
    assert [(step, json.loads(metrics)["loss"]) for step, metrics in steps] == [(1, 0.5), (2, 0.25)]
    (config,) = database.execute("SELECT config FROM configs WHERE run_name = 'sft-t'").fetchone()
    assert json.loads(config)["constitution_version"] == "v1abc"
    alerts = database.execute("SELECT * FROM alerts").fetchall()
    assert "warning: reward hacking" in str(alerts)
    assert tracking_record(job)["link"].startswith("http://127.0.0.1:")


def test_a_missing_tracker_package_is_refused_by_field(tmp_path, monkeypatch):
    monkeypatch.setattr("cai_core.tracking.installed", lambda name: False)
    with pytest.raises(TrackingError, match="^tracker: mlflow is not installed"):
        resolve("mlflow", tmp_path)
    assert resolve("workspace", tmp_path) == "none"  # no trackio: the default is no tracker, not a failure


def test_a_bad_workspace_setting_names_the_file(tmp_path):
    (tmp_path / "tracking.yaml").write_text("tracker: comet\n")
    with pytest.raises(TrackingError, match="tracking.yaml: tracker is 'comet'"):
        resolve("workspace", tmp_path)


def test_the_tracker_does_not_change_the_run_id():
    assert identity_settings({"lr": 1, "tracker": "wandb", "run_id": "x"}) == identity_settings({"lr": 1})


def test_every_job_config_declares_the_same_tracker_field():
    import dataclasses

    from cai_core.critique import GenerateConfig
    from cai_core.evaluation import EvalConfig
    from cai_core.feedback import LabelConfig
    from cai_core.pairs import SampleConfig
    from cai_core.recipe import RecipeConfig

    configs = (SFTConfig, LabelConfig, EvalConfig, GenerateConfig, SampleConfig, RecipeConfig)
    fields = [{f.name: f for f in dataclasses.fields(c)}["tracker"] for c in configs]
    assert len({json.dumps(dict(f.metadata)) for f in fields}) == 1 and fields[0].default == "workspace"


def test_an_evaluation_and_a_labelling_job_name_the_runs_they_came_from(tmp_path):
    make_job(tmp_path, "recipe-ab12-i1-rl", "none")
    make_job(tmp_path, "pairs-1", "none")
    models = ["base=default", f"cai={tmp_path / 'runs' / 'recipe-ab12-i1-rl' / 'final'}"]
    evaluation = make_job(tmp_path, "recipe-ab12-i1-eval", "tensorboard", models=models, judge="default")
    open_tracker(evaluation, tmp_path).finish("done")
    labelling = make_job(tmp_path, "label-1", "tensorboard", model="default")
    record_input_runs(labelling, ["pairs-1", "hh-rlhf.jsonl"])  # a run and an imported file
    open_tracker(labelling, tmp_path).finish("done")

    assert text_of(tensorboard_events(tmp_path / "tensorboard" / "recipe-ab12-i1-eval"), "parent_runs") == (
        "recipe-ab12,recipe-ab12-i1-rl"
    )
    assert text_of(tensorboard_events(tmp_path / "tensorboard" / "label-1"), "parent_runs") == "pairs-1"


def test_a_labelling_job_records_the_runs_its_pairs_came_from(tmp_path):
    from cai_core import jobs
    from cai_core.feedback import LabelConfig
    from cai_core.records import Pair

    ws = Workspace(tmp_path)
    make_job(tmp_path, "pairs-2", "none")
    pairs = [Pair(f"p{i}", "hi", "a", "b", "sampled", "pairs-2", i, "0", "1") for i in range(2)]
    config = LabelConfig(constitution=str(PROJECT_ROOT / "constitutions" / "hhh.yaml"), tracker="none")
    job = jobs.prepare("label", config, ws, pairs=pairs)
    assert parent_runs(job) == ["pairs-2"]


class PositionJudge:
    """A judge whose P("A") is 0.9 for the first-shown answer (`biased`), or for the answer that says "GOOD"."""

    name = "position-judge"

    def __init__(self, biased: bool):
        self.biased = biased

    def score_options(self, chats, options):
        def p_first(chat) -> float:
            text = chat[-1]["content"]
            return 0.9 if self.biased or text.index("GOOD") < text.index("BAD") else 0.1

        return [[math.log(p_first(chat)), math.log(1 - p_first(chat))] for chat in chats]


@pytest.mark.parametrize("biased", [True, False])
def test_a_labelling_job_tells_its_tracker_when_the_judge_picks_by_position(tmp_path, biased):
    from cai_core import jobs
    from cai_core.feedback import LabelConfig
    from cai_core.records import Pair

    answers = ("GOOD answer", "BAD answer")
    pairs = [Pair(f"p{i}", f"q{i}", *answers[:: 1 - 2 * (i % 2)], "import", "f", i, "a", "b") for i in range(40)]
    constitution = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    config = LabelConfig(constitution=constitution, model="position-judge", batch_size=8, tracker="tensorboard")
    job = jobs.run("label", config, Workspace(tmp_path), pairs=pairs, backend=PositionJudge(biased))
    assert job.progress().status == "done", job.progress().message

    events = tensorboard_events(tmp_path / "tensorboard" / job.run_id)
    if biased:
        warning = text_of(events, "monitor_warning")
        assert "swap consistency" in warning and "first-position bias" in warning
    else:
        assert "monitor_warning/text_summary" not in events.Tags()["tensors"]


def test_the_tracker_starts_at_the_jobs_first_numbers_not_before_its_first_records(tmp_path):
    job = make_job(tmp_path, "sft-late", "tensorboard")
    tracker = open_tracker(job, tmp_path)
    assert tracking_record(job) is None and not (tmp_path / "tensorboard").exists()  # nothing imported or written yet
    tracker.log(1, {"loss": 1.0})
    tracker.finish("done")
    assert tracking_record(job)["tracker"] == "tensorboard"
    assert [e.value for e in tensorboard_events(tmp_path / "tensorboard" / "sft-late").Scalars("loss")] == [1.0]


class AnsweringPositionJudge(PositionJudge):
    """Answers as its name says ("GOOD" or "BAD"), and judges as `PositionJudge`."""

    def __init__(self, name: str, biased: bool):
        super().__init__(biased)
        self.name = name

    def generate(self, chats, params, on_done=None):
        from cai_core.backends import Generation

        if on_done:
            on_done(len(chats))
        return [Generation(f"{self.name.upper()} answer", 1, 2, 0.0) for _ in chats]


def test_an_evaluation_job_tells_its_tracker_when_its_grader_picks_by_position(tmp_path, monkeypatch):
    from cai_core import jobs
    from cai_core.evaluation import EvalConfig

    monkeypatch.setattr("cai_core.evaluation.load_backend", lambda spec, ws: AnsweringPositionJudge(spec, True))
    config = EvalConfig(
        models=["good", "bad"], sets=["red-team#limit=20", "benign#limit=20"], judge="judge", tracker="tensorboard"
    )
    job = jobs.run("eval", config, Workspace(tmp_path))
    assert job.progress().status == "done", job.progress().message

    warning = text_of(tensorboard_events(tmp_path / "tensorboard" / job.run_id), "monitor_warning")
    assert warning.startswith("judge position monitor: swap consistency")
