"""The job lifecycle, the same for every kind of job, training included: a cancel made before the start,
a cancel in the middle, a `kill -9` in the middle, then a resume, each ending done with no record lost
or stored twice. Also the runner's own rules: one process per job, progress with a rate and an ETA,
prompts cut to the model's context."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from cai_core import jobs
from cai_core.cli import main
from cai_core.critique import GenerateConfig
from cai_core.evaluation import (
    EvalConfig,
    RoundsConfig,
)
from cai_core.feedback import LabelConfig
from cai_core.jobs import JobBusy, JobFolder, run_job
from cai_core.pairs import SampleConfig
from cai_core.records import Pair
from cai_core.workspace import PROJECT_ROOT

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
DEMO = str(PROJECT_ROOT / "data" / "demo_prompts.jsonl")


@dataclass
class Kind:
    """How the test starts one kind of job and which records must each be there exactly once."""

    prepare: object  # (models, workspace, tmp_path) -> JobFolder
    run: object | None  # the library's run function (config, workspace, on_progress=...); None for training
    config: type | None  # its config class
    tables: dict[str, tuple[str, ...]]  # spooled table -> the fields that key a record


def _generate_config(models, **more):
    tiny = models[0]
    base = dict(constitution=HHH, prompts=DEMO, model=tiny, rounds=2, limit=8, chunk_size=2, max_new_tokens=4)
    return GenerateConfig(**{**base, "temperature": 0, "early_stop": False, **more})


def _pairs(n):
    return [
        Pair(f"p{i}", f"Question {i}?", f"Answer a{i}.", f"Answer b{i} here.", "import", "f", i, "a", "b")
        for i in range(n)
    ]


def _prepare_generate(models, ws, tmp_path):
    return jobs.prepare("generate", _generate_config(models, run_id="life"), ws)


def _prepare_pairs(models, ws, tmp_path):
    return jobs.prepare(
        "pairs", SampleConfig(prompts=DEMO, model=models[0], limit=8, chunk_size=1, max_new_tokens=4, run_id="life"), ws
    )


def _label_config(models):
    return LabelConfig(constitution=HHH, model=models[0], batch_size=2, run_id="life")


def _prepare_label(models, ws, tmp_path):
    return jobs.prepare("label", _label_config(models), ws, pairs=_pairs(16))


def _eval_config(models):
    return EvalConfig(
        models=[f"a={models[0]}", f"b={models[1]}"],
        sets=["red-team#limit=3", "benign#limit=3"],
        judge=models[0],
        max_new_tokens=4,
        batch_size=2,
        run_id="life",
    )


def _prepare_eval(models, ws, tmp_path):
    return jobs.prepare("eval", _eval_config(models), ws)


def _rounds_config(models, traces_run):
    return RoundsConfig(traces_run=traces_run, judge=models[0], batch_size=2, run_id="life")


def _prepare_rounds(models, ws, tmp_path):
    traces = jobs.run("generate", _generate_config(models, temperature=1.0, run_id="traces"), ws)
    return jobs.prepare("eval-rounds", _rounds_config(models, traces.run_id), ws)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return str(path)


def _training(kind: str, data: str, **more):
    def prepare(models, ws, tmp_path):
        from cai_core.train import config_class

        path = _write_jsonl(tmp_path / f"{kind}.jsonl", TRAINING_DATA[data])
        base = dict(model=models[0], dataset=path, max_steps=8, batch_size=2, save_steps=2, learning_rate=1e-3)
        return jobs.prepare(f"train-{kind}", config_class(kind)(**{**base, **more}, run_id="life"), ws)

    return Kind(prepare, None, None, {"trained_models": ("run_id",)})


TRAINING_DATA = {
    "sft": [
        {"messages": [{"role": "user", "content": f"Bread {i}?"}, {"role": "assistant", "content": "Knead, bake."}]}
        for i in range(16)
    ],
    "preferences": [
        {"prompt": f"Question {i}?", "chosen": "I can help safely.", "rejected": "Identify harmful"} for i in range(16)
    ],
    "prompts": [{"prompt": f"How do I bake bread {i}?"} for i in range(16)],
}
REWARD = "tests.train_rewards:low_ids"
RL = dict(reward_model=REWARD, max_new_tokens=4)


def _runner(kind: str):
    return lambda config, ws, **given: jobs.run(kind, config, ws, **given)


KINDS = {
    "generate": Kind(_prepare_generate, _runner("generate"), GenerateConfig, {"trace_steps": ("trace_id", "round")}),
    "pairs": Kind(_prepare_pairs, _runner("pairs"), SampleConfig, {"samples": ("prompt_id",), "pairs": ("pair_id",)}),
    "label": Kind(_prepare_label, _runner("label"), LabelConfig, {"ai_labels": ("pair_id", "principle_id")}),
    "eval": Kind(
        _prepare_eval,
        _runner("eval"),
        EvalConfig,
        {
            "eval_answers": ("prompt_key", "wrapper", "model"),
            "eval_judgments": ("prompt_key", "wrapper", "model_a", "model_b"),
        },
    ),
    "eval-rounds": Kind(
        _prepare_rounds,
        _runner("eval-rounds"),
        RoundsConfig,
        {"round_judgments": ("trace_id", "round", "versus_round")},
    ),
    "train-sft": _training("sft", "sft"),
    "train-rm": _training("rm", "preferences"),
    "train-dpo": _training("dpo", "preferences"),
    "train-ppo": _training("ppo", "prompts", ppo_epochs=1, **RL),
    "train-grpo": _training("grpo", "prompts", num_generations=2, **RL),
    "train-rloo": _training("rloo", "prompts", num_generations=2, **RL),
}


def _keys(job: JobFolder, tables: dict[str, tuple[str, ...]]) -> dict[str, list[tuple]]:
    return {table: [tuple(r[f] for f in fields) for r in job.read(table)] for table, fields in tables.items()}


def _cancel_once_running(job: JobFolder, after: int) -> threading.Thread:
    """Ask the job to stop as soon as its progress passes `after`: a person clicking Cancel mid-run."""

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            progress = job.progress()
            if progress.status == "running" and progress.done > after:
                job.request_cancel()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _cli(ws, *argv) -> int:
    return main(["--data-dir", str(ws.root), *argv])


@pytest.fixture
def one_thread(monkeypatch):
    import torch

    # Tiny matrices on a shared 2-core machine: a second thread only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.processes
def test_cancel_before_start_cancel_mid_run_kill_then_resume(
    kind, tiny_model_path, second_tiny_model_path, workspace, tmp_path, one_thread
):
    spec = KINDS[kind]
    models = (tiny_model_path, second_tiny_model_path)
    job = spec.prepare(models, workspace, tmp_path)
    assert job.spec["kind"] == kind and job.progress().status == "pending"

    # 1. Cancelled while pending: nothing runs, and it says so.
    job.request_cancel()
    assert _cli(workspace, "resume", job.run_id) == 1
    assert job.progress().status == "cancelled" and "before it started" in job.progress().message
    assert not any(_keys(job, spec.tables).values())

    # 2. A cancel found on a stopped run is an old one: resuming clears it. Then a cancel mid-run stops it.
    job.request_cancel()
    if spec.run is None:  # training: through the CLI, cancelled from another thread as a page would
        watcher = _cancel_once_running(job, 0)
        assert _cli(workspace, "resume", job.run_id) == 1
        watcher.join()
    else:
        asked = []

        def cancel_after_the_first_batch(done, total):
            if done and not asked:
                asked.append(done)
                job.request_cancel()

        spec.run(spec.config(**job.spec["config"]), workspace, on_progress=cancel_after_the_first_batch)
    stopped = job.progress()
    assert stopped.status == "cancelled", stopped.message
    assert 0 < stopped.done < stopped.total

    # 3. kill -9 in the middle of the rest, with a record torn by the kill.
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cai_core.cli", "--data-dir", str(workspace.root), "resume", job.run_id],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        progress = job.progress()
        if progress.pid == proc.pid and progress.status == "running" and progress.done > stopped.done:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed = job.progress()
    assert killed.status == "failed" and killed.done < killed.total
    table = next(iter(spec.tables))
    with open(job.records_path(table), "a") as f:
        f.write('{"run_id": "life", "torn": ')

    # 4. Resume: done, every record there once.
    assert _cli(workspace, "resume", job.run_id) == 0
    done = job.progress()
    assert done.status == "done" and done.done == done.total
    keys = _keys(job, spec.tables)
    for table, found in keys.items():
        assert len(found) == len(set(found)), f"{table}: a record was stored twice"
    if spec.run is not None:
        assert sum(len(set(keys[t])) for t in spec.tables if t not in ("pairs",)) == done.total  # none lost
    else:
        assert keys["trained_models"] == [(job.run_id,)] and (job.path / "final" / "config.json").exists()


# --- one registry: training runs are job kinds like any other -------------------------------------------


def test_every_training_algorithm_is_a_job_kind_of_the_one_registry():
    for name in ("sft", "rm", "ppo", "dpo", "grpo", "rloo"):
        kind = jobs.job_kind(f"train-{name}")
        assert kind.name == f"train-{name}" and kind.config.kind == name


def test_cai_resume_runs_a_training_run_through_the_registry(workspace, monkeypatch):
    """`cai resume` has no door of its own for training: it runs the run's kind through `jobs.run`, as for any kind
    (the run is found by its name and snapshot, not prepared again)."""
    config = {"model": "absent-model", "max_steps": 3, "run_id": "sft-ready"}
    job = JobFolder.create(workspace.runs_dir, "sft-ready", {"kind": "train-sft", "model": "m", "config": config})
    (job.path / "data-train.jsonl").write_text('{"prompt": "Hi?", "completion": "Hello."}\n')
    ran = []

    def run(kind, config, ws, **given):
        ran.append((kind, config.run_id))
        job.set_progress("done", 3, 3)
        return job

    monkeypatch.setattr(jobs, "run", run)
    assert _cli(workspace, "resume", "sft-ready") == 0
    assert ran == [("train-sft", "sft-ready")]


def _python_sources() -> list[Path]:
    """The project's code: the library, the pages and their helpers (tests and benchmarks aside)."""
    return [
        PROJECT_ROOT / "app.py",
        *sorted(p for d in ("cai_core", "pages", "ui") for p in (PROJECT_ROOT / d).rglob("*.py")),
    ]


def _strings(tree: ast.AST) -> Iterator[ast.AST]:
    """Every string constant and f-string of a module but its docstrings, which may name kinds as prose does."""
    skipped = {  # the docstrings, and the parts of f-strings (each f-string is read whole)
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    } | {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        text = isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))
        if text and id(node) not in skipped:
            yield node


def test_the_training_kinds_are_named_by_the_registry_alone():
    """Which kinds are training runs (train-sft, ...) is the registry's to say (`jobs.TRAINING_KINDS`,
    `jobs.training_kind_name`): the runs query, the Train page, `cai train` and the recipe ask it rather than
    spelling the name's prefix, so that a training kind is one registration wherever runs are listed."""
    spelled = re.compile(r"^train-[a-z]*$|'train-")
    found = []
    for path in _python_sources():
        if path == PROJECT_ROOT / "cai_core" / "jobs.py":
            continue
        for node in _strings(ast.parse(path.read_text(), str(path))):
            parts = node.values if isinstance(node, ast.JoinedStr) else [node]
            text = "".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
            if spelled.search(text):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {text!r}")
    assert found == []


def test_every_cai_command_that_starts_a_job_starts_it_through_start_job():
    """Preparing a job from a command's flags, then detaching it or running it here, is `cli.jobs.start_job`'s
    alone: a command with its own copy (`cai train`, `cai recipe run`) would miss what is added there."""
    copies = []
    for path in sorted((PROJECT_ROOT / "cai_core" / "cli").glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(function, ast.FunctionDef) or function.name == "start_job":
                continue
            called = {
                getattr(node.func, "attr", getattr(node.func, "id", None))
                for node in ast.walk(function)
                if isinstance(node, ast.Call)
            }
            if {"prepare", "run_here"} <= called:
                copies.append(f"{path.name}: {function.name}")
    assert copies == []


# --- the runner's own rules ------------------------------------------------------------------------


class _Counting:
    """A Work of `n` one-item batches that spools nothing; what a job module gives the runner."""

    unit, engine = "item", "test"

    def __init__(self, n, during=None):
        self.n, self.count, self.during = n, 0, during

    def total(self):
        return self.n

    def done(self):
        return self.count

    def batches(self):
        return range(self.n - self.count)

    def step(self, batch):
        if self.during:
            self.during(self)
        time.sleep(0.01)
        self.count += 1


def test_a_second_start_of_a_running_job_is_refused_and_does_no_work(workspace):
    job = JobFolder.create(workspace.runs_dir, "busy", {"kind": "test", "model": "none"})
    refused = []

    def start_again(work):
        if work.count == 1:
            with pytest.raises(JobBusy, match="busy is already running"):
                run_job(JobFolder(job.path), lambda: refused.append(1) or _Counting(3))

    run_job(job, lambda: _Counting(3, during=start_again))
    assert job.progress().status == "done" and not refused  # the second start never built its work


HOLD_LOCK = (
    "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(float(sys.argv[2]))"
)


def test_a_second_process_waits_for_the_running_one_through_the_cli(tiny_model_path, workspace, capsys):
    """`cai resume` while the same job runs elsewhere follows that run instead of doing its work again."""
    job = jobs.prepare("generate", _generate_config((tiny_model_path,), limit=2, rounds=1), workspace)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(job.path / "lock"), "60"])
    try:
        time.sleep(0.5)
        threading.Timer(1.0, lambda: job.set_progress("done", 4, 4)).start()  # the other process finishes
        assert _cli(workspace, "resume", job.run_id) == 0
    finally:
        holder.kill()
        holder.wait()
    assert "already running" in capsys.readouterr().out
    assert not job.read("trace_steps")  # this process did none of the work

    # a holder that dies before it reports anything does not keep a follower waiting
    job.set_progress("pending", 0, 4, "starting")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(job.path / "lock"), "1"])
    time.sleep(0.5)
    assert _cli(workspace, "resume", job.run_id) == 1
    holder.wait()
    assert "pending at 0/4" in capsys.readouterr().err


def test_progress_records_rate_eta_elapsed_and_engine(tiny_model_path, workspace):
    seen = []
    job = jobs.prepare("generate", _generate_config((tiny_model_path,), limit=4, rounds=1, chunk_size=1), workspace)

    def look(done, total):
        seen.append(job.progress())

    jobs.run(
        "generate", _generate_config((tiny_model_path,), limit=4, rounds=1, chunk_size=1), workspace, on_progress=look
    )
    running = [p for p in seen if p.status == "running" and p.done]
    assert running and all(p.rate > 0 and p.eta is not None and p.elapsed > 0 for p in running)
    assert all(p.unit == "step" and p.engine.startswith("hf · ") for p in running)  # the engine, then the model
    final = json.loads((job.path / "progress.json").read_text())
    assert final["status"] == "done" and final["engine"] and final["elapsed"] > 0
    assert "steps" in job.progress().summary() and "elapsed" in job.progress().summary()


def _relaunched_then_cancelled(job: JobFolder) -> None:
    """A run cancelled at 1/3 and resumed (the launch marks it pending before its process exists), then a Cancel
    clicked in that moment."""
    job.set_progress("cancelled", 1, 3, "cancelled by request")
    job.start([sys.executable, "-c", "pass"]).wait()  # the launch; its process would start the runner
    job.request_cancel()


def test_a_cancel_made_between_launch_and_start_is_honoured(workspace):
    job = JobFolder.create(workspace.runs_dir, "relaunched", {"kind": "test", "model": "none"})
    _relaunched_then_cancelled(job)
    run_job(job, lambda: _Counting(3))
    stopped = job.progress()
    assert stopped.status == "cancelled" and "before it started" in stopped.message
    assert (stopped.done, stopped.total) == (1, 3)  # where it had stopped, not a run that lost its work
    assert not job.cancel_requested()


def test_a_training_run_honours_that_cancel_as_every_job_does(workspace):
    """A training run starts through the job runner's own first steps: the relaunched run's card keeps where it
    had stopped (its own copy of those steps wrote 0/max_steps)."""
    config = {"model": "absent-model", "max_steps": 3, "run_id": "sft-relaunched"}
    spec = {"kind": "train-sft", "model": "absent-model", "config": config}
    job = JobFolder.create(workspace.runs_dir, "sft-relaunched", spec)
    (job.path / "data-train.jsonl").write_text('{"prompt": "Hi?", "completion": "Hello."}\n')
    _relaunched_then_cancelled(job)
    assert _cli(workspace, "resume", job.run_id) == 1  # no model is loaded: the cancel comes first
    stopped = job.progress()
    assert stopped.status == "cancelled" and "before it started" in stopped.message
    assert (stopped.done, stopped.total) == (1, 3)
    assert not job.cancel_requested()


def test_a_huge_prompt_is_cut_to_the_context_with_a_warning_on_the_trace(tiny_model_path, workspace, tmp_path):
    prompts = tmp_path / "huge.jsonl"
    huge = "Tell me about bread. " * 5000  # about 100 KB: far past the tiny model's 4096 positions
    prompts.write_text(json.dumps({"id": "huge", "prompt": huge}) + "\n" + json.dumps({"prompt": "Hello?"}) + "\n")
    config = replace(_generate_config((tiny_model_path,), rounds=1), prompts=str(prompts))
    job = jobs.run("generate", config, workspace)
    assert job.progress().status == "done"
    traces = {t["prompt_id"]: t for t in job.read("traces")}
    cut = traces["huge"]
    assert len(cut["prompt"]) < len(huge) and huge.startswith(cut["prompt"])
    assert "cut" in cut["warning"] and "context" in cut["warning"]
    assert not next(t for k, t in traces.items() if k != "huge")["warning"]
    steps = [s for s in job.read("trace_steps") if s["trace_id"] == cut["trace_id"]]
    assert all(s["prompt_tokens"] <= 4096 for s in steps) and len(steps) == 2


def test_a_job_whose_process_dies_of_a_full_disk_says_so_on_its_card(tmp_path):
    from .test_store import fill_disk, tmpfs

    with tmpfs(tmp_path / "small", "size=1m") as small:
        job = JobFolder.create(small / "runs", "gen-full", {"kind": "generate", "model": "m", "config": {}})
        fill_disk(small, 8 * 1024)
        # the job's process: the disk fills under it before it can report anything
        spool = job.path / "spool.jsonl"
        process = job.start([sys.executable, "-c", f"open({str(spool)!r}, 'wb').write(bytes(10**7))"])
        assert process.wait(timeout=60) != 0
        progress = job.progress()
        assert progress.status == "failed"
        assert "No space left on device" in progress.message


def test_a_created_job_no_process_has_started_stays_pending(tmp_path):
    job = JobFolder.create(tmp_path / "runs", "gen-later", {"kind": "generate", "model": "m", "config": {}})
    assert job.progress().status == "pending"


def test_a_cancel_stops_a_long_step_without_waiting_for_its_end(tmp_path):
    """The Cancel a person clicks while one step of the job runs for minutes (a model load, a long batch)."""
    job = JobFolder.create(tmp_path / "runs", "gen-slow", {"kind": "generate", "model": "m", "config": {}})
    finished = []

    class SlowWork:
        unit, engine, in_batch = "step", "", 0

        def total(self):
            return 1

        def done(self):
            return len(finished)

        def batches(self):
            return [0]

        def step(self, batch):
            job.request_cancel()  # clicked while the step runs
            time.sleep(120)
            finished.append(batch)

    run_job(job, SlowWork)
    assert finished == [] and job.progress().status == "cancelled"
    assert not job.cancel_requested()
