"""Constitution A/B on the tiny model: two saved versions of the red-team constitution, SL-CAI under each on the same
prompts and seeds, judged by a neutral question or a third constitution; paired figures, resumable like every job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cai_core import jobs
from cai_core.ab import STAGES, ABConfig, ABError, ABWork
from cai_core.ab_result import DIFFERENCE, ab_prompt, ab_result, ab_runs
from cai_core.constitution import load_constitution, save_constitution
from cai_core.jobs import JobFolder
from cai_core.records import Trace, TraceStep, to_row
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

RED_TEAM = PROJECT_ROOT / "constitutions" / "red_team.yaml"


@pytest.fixture
def two_versions(workspace, tmp_path) -> tuple[str, str]:
    """The red-team constitution as shipped, then saved again with its first principle's critique reworded:
    two versions in the store's history of one file."""
    path = tmp_path / "red_team.yaml"
    first = load_constitution(RED_TEAM)
    principles = [p.model_copy() for p in first.principles]
    principles[0] = principles[0].model_copy(
        update={"critique_request": "Say plainly what in the answer could hurt someone."}
    )
    second = first.model_copy(update={"principles": principles})
    with Store.open(workspace) as store:
        for c, note in ((first, "as shipped"), (second, "plainer critique")):
            save_constitution(c, path)
            store.record_constitution(c, path, note)
    return first.version, second.version


def tiny_ab(model: str, a: str, b: str, **overrides) -> ABConfig:
    settings = {"limit": 1, "rounds": 1, "max_new_tokens": 8, "judge": model, "model": model, "batch_size": 4}
    return ABConfig(constitution_a=a, constitution_b=b, **settings | overrides)


def spool_generation(job: JobFolder, side: str, finals: dict[str, str]) -> None:
    """A finished SL-CAI stage's records, as a generate job spools them: one round, the given final answers."""
    stage = JobFolder.create(job.path.parent, f"{job.run_id}-gen-{side}", {"kind": "generate", "config": {}})
    for prompt in job.read_input("prompts"):
        trace_id = f"{stage.run_id}:{prompt['id']}:0"
        trace = Trace(trace_id, stage.run_id, prompt["id"], prompt["prompt"], prompt["category"], 0, "m", side, side)
        stage.append("traces", [to_row(trace)])
        initial = TraceStep(trace_id, 0, None, None, "Here is an answer.", 1, 0, 1, 0.0)
        final = TraceStep(trace_id, 1, "p1", "A critique.", finals.get(prompt["id"], "A revised answer."), 1, 1, 1, 0.0)
        stage.append("trace_steps", [to_row(initial), to_row(final)])


def test_the_figures_are_paired_per_prompt_and_count_over_refusal(workspace, tmp_path):
    """Hand-made judgments of known outcome: the win rates, the paired difference, the per-category figures and
    the over-refusal come out as counted by hand."""
    first = load_constitution(RED_TEAM)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    save_constitution(first, a)
    save_constitution(first.model_copy(update={"principles": first.principles[:2]}), b)
    job = jobs.prepare("ab", ABConfig(constitution_a=str(a), constitution_b=str(b), limit=2), workspace)
    keys = [p["id"] for p in job.read_input("prompts")]
    assert keys == ["red-team/red-01", "red-team/red-02", "benign/benign-01", "benign/benign-02"]
    spool_generation(job, "a", {"benign/benign-01": "I'm sorry, but I can't help with that."})
    spool_generation(job, "b", {})
    judge = JobFolder.create(workspace.runs_dir, f"{job.run_id}-judge", {"kind": "ab-judge", "config": {}})
    # A beats B on three prompts of four and improves on its initial answer everywhere; B ties its initial answer
    p_a = {"A vs B": [0.9, 0.8, 0.7, 0.2], "A vs initial": [0.8] * 4, "B vs initial": [0.5] * 4}
    judge.append(
        "ab_judgments",
        [
            {"pair_id": f"{key}:{c}", "prompt_key": key, "comparison": c, "principle_id": "neutral", "p_a": p}
            | {"failed": False}
            for c, values in p_a.items()
            for key, p in zip(keys, values, strict=True)
        ],
    )
    result = ab_result(workspace, job.run_id)
    rates = result.win_rates.set_index("comparison")
    assert rates.loc["A vs B", "win_rate"] == 0.75 and rates.loc["A vs B", "n"] == 4
    assert rates.loc["A vs initial", "win_rate"] == 1.0 and rates.loc["B vs initial", "win_rate"] == 0.5
    assert tuple(rates.loc[DIFFERENCE, ["win_rate", "low", "high"]]) == (0.5, 0.5, 0.5)  # the same gain on each
    category = result.by_category.set_index(["comparison", "label"])
    assert (
        category.loc[("A vs B", "harmful"), "win_rate"] == 1.0 and category.loc[("A vs B", "benign"), "win_rate"] == 0.5
    )
    over = result.over_refusal.set_index("answers")
    assert over.loc["A final", "refusal_rate"] == 0.5 and over.loc["B final", "refusal_rate"] == 0.0
    assert over.loc["initial", "n"] == 2 and 0 < over.loc["A final", "low"] < 0.5 < over.loc["A final", "high"]


def test_an_ab_of_two_versions_runs_end_to_end(tiny_model_path, workspace, two_versions):
    a, b = two_versions
    job = jobs.run("ab", tiny_ab(tiny_model_path, a, b), workspace)
    assert job.progress().status == "done", job.progress().message
    assert [row["step"] + row["side"] for row in job.read("ab_stages")] == ["generatea", "generateb", "judge"]

    result = ab_result(workspace, job.run_id)
    assert result.versions["a"] == a and result.versions["b"] == b and result.names["judge"] == "neutral judge"
    # one red-team and one benign prompt, three comparisons each, under the one neutral question
    judge = JobFolder(workspace.runs_dir / f"{job.run_id}-judge")
    assert len(judge.read("ab_judgments")) == 2 * 3
    rates = result.win_rates.set_index("comparison")
    assert list(rates.index) == ["A vs B", "A vs initial", "B vs initial", DIFFERENCE]
    assert (rates["n"] == 2).all() and (
        (rates["low"] <= rates["win_rate"]) & (rates["win_rate"] <= rates["high"])
    ).all()
    # paired: the difference is taken prompt by prompt, so its mean is the difference of the two means
    assert rates.loc[DIFFERENCE, "win_rate"] == pytest.approx(
        rates.loc["A vs initial", "win_rate"] - rates.loc["B vs initial", "win_rate"]
    )
    assert set(result.by_principle["principle_id"]) == {"neutral"}
    assert set(result.by_category["label"]) == {"harmful", "benign"}
    over = result.over_refusal
    assert set(over["answers"]) == {"A final", "B final", "initial"} and (over["n"] == 1).all()

    # the drill-down: both traces of a prompt, round by round, and what the judge said
    key = result.prompts["key"].iloc[0]
    found = ab_prompt(workspace, job.run_id, key)
    assert [s["round"] for s in found.traces["a"]] == [0, 1] and [s["round"] for s in found.traces["b"]] == [0, 1]
    assert found.traces["a"][1]["principle_id"] and set(found.judgments["comparison"]) == {
        "A vs B",
        "A vs initial",
        "B vs initial",
    }
    # the same seeds: both generations start from the same initial answer
    assert found.traces["a"][0]["response"] == found.traces["b"][0]["response"]
    # the generations are ordinary SL-CAI runs: their traces are in the store under the A/B's name
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        assert {f"{job.run_id}-gen-a", f"{job.run_id}-gen-b"} <= set(store.runs(kind="generate")["run_id"])
    assert [j.run_id for j in ab_runs(workspace, {a})] == [job.run_id]
    # the same A/B again is the same run, already done: nothing runs twice
    assert jobs.run("ab", tiny_ab(tiny_model_path, a, b), workspace).run_id == job.run_id
    assert len(judge.read("ab_judgments")) == 2 * 3


def test_a_third_constitution_judges_per_principle_and_no_version_judges_itself(
    tiny_model_path, workspace, two_versions
):
    a, b = two_versions
    with pytest.raises(ABError, match="constitution A: it would judge itself"):
        jobs.prepare("ab", tiny_ab(tiny_model_path, a, b, judge_constitution=a), workspace)
    with pytest.raises(ABError, match="same version"):
        jobs.prepare("ab", tiny_ab(tiny_model_path, a, a), workspace)
    with pytest.raises(KeyError, match="no constitution version 'nope'"):
        jobs.prepare("ab", tiny_ab(tiny_model_path, a, "nope"), workspace)
    hhh = PROJECT_ROOT / "constitutions" / "hhh.yaml"
    job = jobs.run("ab", tiny_ab(tiny_model_path, a, b, judge_constitution=str(hhh), sets=["red-team"]), workspace)
    assert job.progress().status == "done", job.progress().message
    result = ab_result(workspace, job.run_id)
    judges = {p.id for p in load_constitution(hhh).enabled_principles}
    assert set(result.by_principle["principle_id"]) == judges
    assert result.over_refusal.empty  # no benign prompts were asked


@pytest.mark.processes
def test_a_killed_ab_resumes_without_doing_anything_twice(tiny_model_path, workspace, two_versions):
    a, b = two_versions
    config = tiny_ab(tiny_model_path, a, b)
    job = jobs.prepare("ab", config, workspace)
    script = (
        "from pathlib import Path\n"
        "from cai_core import jobs\n"
        "from cai_core.ab import ABConfig\n"
        "from cai_core.workspace import Workspace\n"
        f"jobs.run('ab', ABConfig(**{config.__dict__!r}), Workspace(Path({str(workspace.root)!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    gen_b = JobFolder(workspace.runs_dir / f"{job.run_id}-gen-b")
    deadline = time.time() + 300
    while not (gen_b.path / "run.json").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    assert child.poll() is None, "the A/B ended before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    gen_a = JobFolder(workspace.runs_dir / f"{job.run_id}-gen-a")
    assert gen_a.progress().status == "done"
    steps_before = gen_a.records_path("trace_steps").read_bytes()
    assert jobs.run("ab", config, workspace).progress().status == "done"
    assert gen_a.records_path("trace_steps").read_bytes() == steps_before  # A's generation did not run again
    judged = [
        (j["pair_id"], j["principle_id"])
        for j in JobFolder(job.path.parent / f"{job.run_id}-judge").read("ab_judgments")
    ]
    assert len(judged) == len(set(judged)) == 2 * 3
    stages = [row["run_id"] for row in job.read("ab_stages")]
    assert len(stages) == len(set(stages)) == 3


def test_a_cancelled_ab_stops_its_running_stage_and_resumes(tiny_model_path, workspace, two_versions):
    a, b = two_versions
    config = tiny_ab(tiny_model_path, a, b)

    def cancel_during_b(stage, status):
        if stage.side == "b" and status == "running":
            JobFolder(workspace.runs_dir / jobs.prepare("ab", config, workspace).run_id).request_cancel()

    job = jobs.run("ab", config, workspace, on_stage=cancel_during_b)
    assert job.progress().status == "cancelled"
    assert not (workspace.runs_dir / f"{job.run_id}-judge").exists()  # nothing after B's generation ran
    assert jobs.run("ab", config, workspace).progress().status == "done"


def test_a_cancel_waits_for_the_running_stage_to_have_a_folder(workspace, two_versions):
    """A cancel made before the running stage has made its folder is passed on once the folder exists; the watcher
    does not die on the missing folder (it did: a later cancel then never reached the stage)."""
    import threading

    job = jobs.prepare("ab", ABConfig(constitution_a=two_versions[0], constitution_b=two_versions[1]), workspace)
    work = ABWork(job, ABConfig(**job.spec["config"]), workspace)
    work.running = stage = work.stage_job(STAGES[0])
    job.request_cancel()
    stop = threading.Event()
    watcher = threading.Thread(target=work.pass_on_cancel, args=(stop,), daemon=True)
    watcher.start()
    time.sleep(1.2)
    assert watcher.is_alive() and not stage.path.exists()
    stage.path.mkdir()
    deadline = time.time() + 5
    while not stage.cancel_requested() and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    assert stage.cancel_requested()


def test_the_cli_runs_an_ab_of_two_files_and_prints_its_paired_result(tiny_model_path, workspace, tmp_path, capsys):
    from cai_core.cli import main as cai

    first = load_constitution(RED_TEAM)
    second = first.model_copy(update={"principles": first.principles[:1]})
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    save_constitution(first, a)
    save_constitution(second, b)
    data = ["--data-dir", str(workspace.root)]
    flags = ["--limit", "1", "--rounds", "1", "--max-new-tokens", "8", "--model", tiny_model_path]
    assert cai([*data, "constitution", "ab", str(a), str(b), *flags, "--judge", tiny_model_path]) == 0
    out = capsys.readouterr().out
    assert "paired win rates" in out and "A vs initial" in out and DIFFERENCE in out and "over-refusal" in out
    [job] = ab_runs(workspace)
    assert cai([*data, "constitution", "ab-show", job.run_id, "--prompt", "benign/benign-01"]) == 0
    out = capsys.readouterr().out
    assert "## constitution A" in out and "## constitution B" in out and "A vs B" in out
    assert cai([*data, "constitution", "ab", str(a), str(a), *flags]) == 2
    assert "nothing to compare" in capsys.readouterr().err
