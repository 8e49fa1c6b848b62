"""Experiment tracking: a training run, a recipe stage or a labelling/evaluation job reports its config, constitution,
parent runs, numbers and monitor warnings to the tracker people already watch: trackio, W&B, MLflow or TensorBoard.

Each run picks one with its `tracker` field (declared once, `tracker_field`); "workspace" takes the workspace's
default (`tracking.yaml` in the data folder, key `tracker`), and without one, trackio when it is installed. The
trackers write under the workspace (wandb/, mlruns/, tensorboard/; trackio in its own TRACKIO_DIR) and nothing leaves
the machine: W&B runs offline unless the operator sets WANDB_MODE=online, the one remote choice. What the run's
tracker is and how to open it is kept in the job folder's tracking.json, where the Train page finds its link."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Literal, Protocol

import yaml

from .config import ConfigError
from .job_folder import JobFolder, write_json_atomic
from .workspace import write_file_atomically

TrackerChoice = Literal["workspace", "trackio", "wandb", "mlflow", "tensorboard", "none"]
# the package each tracker needs: a tracker whose package is missing is refused by name, not skipped silently
PACKAGES = {"trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
PROJECT = "cai-workbench"
SETTINGS_FILE = "tracking.yaml"
# what a run's tracker is told besides its config: where its data's labels came from and what it came from
FACTS = ("kind", "constitution", "constitution_version", "parent_runs")


def tracker_field():
    """The experiment tracker a run reports to, declared once for every config that runs as a job."""
    return field(
        default="workspace",
        metadata={
            "help": "Experiment tracker: trackio, wandb (offline unless WANDB_MODE=online), mlflow (a local file "
            "store), tensorboard, none; workspace: the workspace's default (tracking.yaml), else trackio when "
            "installed.",
            "label": "Experiment tracker",
        },
    )


class TrackingError(ConfigError):
    """The chosen tracker cannot run here (its package is missing, or the workspace's setting is not a tracker)."""


def installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name]) is not None


def workspace_default(root: Path) -> str:
    """The workspace's tracker: tracking.yaml's `tracker`, else trackio when installed, else none."""
    path = Path(root) / SETTINGS_FILE
    if path.exists():
        chosen = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("tracker")
        if chosen not in PACKAGES and chosen != "none":
            raise TrackingError(f"{path}: tracker is {chosen!r}; use one of {', '.join([*PACKAGES, 'none'])}")
        return chosen
    return "trackio" if installed("trackio") else "none"


def resolve(choice: str, root: Path) -> str:
    """The tracker a run reports to; raises TrackingError, naming the field, when its package is missing."""
    name = workspace_default(root) if choice == "workspace" else choice
    if name != "none" and not installed(name):
        raise TrackingError(
            f"{name} is not installed (pip install {PACKAGES[name]}); choose another tracker or none", "tracker"
        )
    return name


# the settings that may name a run a job starts from or reads: a run id, or a path inside its folder (a recipe
# stage's model is the earlier stage's runs/ID/final)
RUN_SETTINGS = (
    "model", "critic_model", "reward_model", "ref_model", "judge_model", "judge", "labels", "dataset", "prompts",
    "source_run",
)  # fmt: skip
INPUT_PARENTS = "parent_runs.json"
WARNING_FILE = "monitor_warning.txt"


def record_input_runs(job: JobFolder, runs: Iterable[str]) -> None:
    """Keep in the job's folder the runs its inputs came from where its config does not name them (the runs that
    made the pairs a labelling job judges): its tracker lists them among its parents."""
    write_json_atomic(job.path / INPUT_PARENTS, {"runs": sorted(set(runs))})


def record_warning(job: JobFolder, text: str) -> None:
    """A job's monitor warning (a labelling job's judge position monitor), or "" once it no longer holds: its
    tracker notes it with the job's next numbers. Training runs pass theirs directly (`RunContext.track`)."""
    write_file_atomically(job.path / WARNING_FILE, lambda out: out.write(text.encode()))


def _run_named(value, runs_dir: Path) -> str | None:
    """The run a setting names, by its id or by a path inside its folder; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    if len(path.parts) == 1 and not path.is_absolute():
        run = value
    else:
        try:
            run = path.resolve().relative_to(runs_dir.resolve()).parts[0]
        except (ValueError, IndexError):
            return None
    return run if (runs_dir / run / "run.json").exists() else None


def parent_runs(job: JobFolder) -> list[str]:
    """The runs this one came from: the recipe whose stage it is (the stage's id names it), the runs its settings
    name (its model, reward model, labels, data, or each model an evaluation compares) and the runs its inputs
    came from (`record_input_runs`)."""
    runs_dir, config = job.path.parent, job.spec.get("config", {})
    recipe = re.match(r"^(recipe-[A-Za-z0-9]+)-i\d+-", job.run_id)
    named = [config.get(key) for key in RUN_SETTINGS]
    named += [spec.split("=", 1)[-1] for spec in config.get("models") or [] if isinstance(spec, str)]
    recorded = job.path / INPUT_PARENTS
    if recorded.exists():
        named += json.loads(recorded.read_text(encoding="utf-8"))["runs"]
    found = [recipe.group(1)] if recipe else []
    found += [run for value in named if (run := _run_named(value, runs_dir))]
    return [run for run in dict.fromkeys(found) if run != job.run_id]


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def note(self, key: str, text: str) -> None:
        """Something that happened during the run (a monitor warning), shown beside its curves."""

    def finish(self, status: str) -> None: ...


class _Trackio:
    def __init__(self, root: Path, run_id: str, config: dict):
        # trackio's folder is TRACKIO_DIR, read once when trackio is first imported; unset, the workspace's, as the
        # other trackers' (trackio's own default, under HF_HOME, would mix every workspace's runs in one database).
        # A job runs in a process of its own, so that is its workspace; a process that runs jobs of several
        # workspaces itself (a notebook) keeps the first one's
        os.environ.setdefault("TRACKIO_DIR", str(root / "trackio"))
        import trackio
        from trackio.utils import TRACKIO_DIR

        # trackio prints its chatter on stdout, where a `cai` command's data goes (`cai bench`'s JSON): it goes
        # to stderr with every other progress line
        with contextlib.redirect_stdout(sys.stderr):
            self.run = trackio.init(project=PROJECT, name=run_id, config=config, resume="allow")
        self.where = TRACKIO_DIR
        self.command = f"TRACKIO_DIR={self.where} trackio show --project {PROJECT}"
        self.link = f"http://127.0.0.1:7860/?project={PROJECT}&runs={run_id}"

    def log(self, step, metrics):
        self.run.log(metrics, step=step)

    def note(self, key, text):
        self.run.alert(title=key, text=text)

    def finish(self, status):
        from trackio import context_vars

        with contextlib.redirect_stdout(sys.stderr):
            self.run.finish()
        # Run.finish leaves the run trackio's current one, which its exit hook then finishes again, printing again
        if context_vars.current_run.get() is self.run:
            context_vars.current_run.set(None)


class _Wandb:
    def __init__(self, root: Path, run_id: str, config: dict):
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        self.where = root / "wandb"
        self.where.mkdir(parents=True, exist_ok=True)
        # the run id is a wandb id too, so a resumed job continues its run
        wandb_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)
        self.run = wandb.init(
            project=PROJECT, name=run_id, id=wandb_id, dir=str(root), config=config, mode=mode, resume="allow"
        )
        offline = mode == "offline"
        # an offline run has no viewer until it is synced, which is the operator's choice to make
        self.command = f"wandb sync {self.where}/offline-run-*-{wandb_id}" if offline else self.run.url
        self.link = None if offline else self.run.url

    def log(self, step, metrics):
        self.run.log(metrics, step=step)

    def note(self, key, text):
        self.run.summary[key] = text

    def finish(self, status):
        self.run.finish(exit_code=0 if status == "done" else 1)


class _Mlflow:
    def __init__(self, root: Path, run_id: str, config: dict, resume_id: str | None):
        import mlflow

        self.mlflow = mlflow
        self.where = root / "mlruns"
        # mlflow-skinny has no SQL store (no SQLAlchemy): its file store is the local one, which 3.x asks to allow
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.where.as_uri())
        mlflow.set_experiment(PROJECT)
        self.run = mlflow.start_run(run_id=resume_id) if resume_id else mlflow.start_run(run_name=run_id)
        self.resume_id = self.run.info.run_id
        if not resume_id:
            mlflow.log_params({key: str(value)[:500] for key, value in config.items()})
            mlflow.set_tags({key: config[key] for key in FACTS})
        self.command = f"mlflow ui --backend-store-uri {self.where.as_uri()}"
        self.link = f"http://127.0.0.1:5000/#/experiments/{self.run.info.experiment_id}/runs/{self.resume_id}"

    def log(self, step, metrics):
        self.mlflow.log_metrics(metrics, step=step)

    def note(self, key, text):
        self.mlflow.set_tag(key, text[:5000])

    def finish(self, status):
        self.mlflow.end_run("FINISHED" if status == "done" else "KILLED")


class _TensorBoard:
    def __init__(self, root: Path, run_id: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.where = root / "tensorboard" / run_id
        self.writer = SummaryWriter(str(self.where))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")
        for key in FACTS:
            self.writer.add_text(key, config[key])
        self.command = f"tensorboard --logdir {root / 'tensorboard'}"
        self.link = "http://localhost:6006/"

    def log(self, step, metrics):
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def note(self, key, text):
        self.writer.add_text(key, text)
        self.writer.flush()

    def finish(self, status):
        self.writer.close()


class _JobTracker:
    """The job's run in its tracker, started at the job's first numbers rather than at its start (importing a tracker
    takes seconds on a loaded machine: trackio about 8 s here, which would hold back the job's first records), that
    also notes the job's recorded monitor warning (`record_warning`) whenever it changes: read at each of the job's
    numbers, a stat when nothing changed."""

    def __init__(self, start: Callable[[], Tracker], job: JobFolder):
        self.start, self.started = start, None
        self.path = job.path / WARNING_FILE
        self.seen: tuple[int, int] | None = None
        self.noted = ""

    @property
    def tracker(self) -> Tracker:
        self.started = self.started or self.start()
        return self.started

    def _forward(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if (stat.st_mtime_ns, stat.st_size) == self.seen:
            return
        self.seen = (stat.st_mtime_ns, stat.st_size)
        text = self.path.read_text(encoding="utf-8")
        if text and text != self.noted:
            self.tracker.note("monitor_warning", text)
        self.noted = text

    def log(self, step, metrics):
        self.tracker.log(step, metrics)
        self._forward()

    def note(self, key, text):
        self.tracker.note(key, text)

    def finish(self, status):
        self._forward()  # the last batch's warning, recorded after its numbers
        self.tracker.finish(status)  # a job that ended before its first numbers is still a run, with its status


def open_tracker(job: JobFolder, root: Path) -> Tracker | None:
    """The job's run in its tracker, with its config, constitution and parent runs, started (or resumed) at its
    first numbers; None when the job's config has no tracker field or its tracker is none. A tracker that cannot
    run here is refused now (`resolve`), not at the first numbers."""
    config = job.spec.get("config", {})
    if "tracker" not in config:
        return None
    name = resolve(config["tracker"], root)
    if name == "none":
        return None
    return _JobTracker(lambda: _start(job, root, name), job)


def _start(job: JobFolder, root: Path, name: str) -> Tracker:
    """Start (or resume) the job's run in tracker NAME; records tracking.json in the job folder."""
    spec = job.spec
    config = spec["config"]
    record_path = job.path / "tracking.json"
    previous = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    constitution = spec.get("constitution") or {}
    facts = {
        "kind": spec.get("kind", ""),
        "constitution": constitution.get("name", ""),
        "constitution_version": constitution.get("version", ""),
        "parent_runs": ",".join(parent_runs(job)),
    }
    run_config = {**config, **facts}  # the facts go with the config, where every tracker shows and filters runs
    if name == "trackio":
        tracker = _Trackio(root, job.run_id, run_config)
    elif name == "wandb":
        tracker = _Wandb(root, job.run_id, run_config)
    elif name == "mlflow":
        tracker = _Mlflow(root, job.run_id, run_config, previous.get("mlflow_run_id"))
    else:
        tracker = _TensorBoard(root, job.run_id, run_config)
    record = {"tracker": name, "where": str(tracker.where), "open_with": tracker.command, "link": tracker.link}
    if name == "mlflow":
        record["mlflow_run_id"] = tracker.resume_id
    write_json_atomic(record_path, record)
    return tracker


def tracking_record(job: JobFolder) -> dict | None:
    """What the job reported to and how to open it (tracking.json), for the pages' link."""
    path = job.path / "tracking.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
