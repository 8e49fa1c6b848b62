import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cai_core import jobs
from cai_core.backends import SamplingParams
from cai_core.backends.hf import HFBackend
from cai_core.constitution import load_constitution, save_constitution
from cai_core.critique import GenerateConfig, choose_principle, critique_chat, critique_once
from cai_core.jobs import JobFolder
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
DEMO = str(PROJECT_ROOT / "data" / "demo_prompts.jsonl")


def config(model, **overrides):
    base = dict(constitution=HHH, prompts=DEMO, model=model, rounds=2, limit=4, max_new_tokens=6, temperature=0)
    return GenerateConfig(**{**base, **overrides})


def test_every_step_is_recorded_with_its_principle_and_constitution_version(tiny_model_path, workspace):
    job = jobs.run("generate", config(tiny_model_path, samples=2), workspace)
    assert job.progress().status == "done"
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        counts = store.counts()
        trace, steps = store.trace(f"{job.run_id}:demo-01:1")
    assert counts["traces"] == 4 * 2 and counts["trace_steps"] == 4 * 2 * 3
    version = load_constitution(HHH).version
    assert trace.constitution_version == version and trace.sample_index == 1
    assert [s.round for s in steps] == [0, 1, 2]
    assert steps[0].principle_id is None and steps[0].critique is None
    enabled = {p.id for p in load_constitution(HHH).enabled_principles}
    assert all(s.principle_id in enabled and s.critique is not None for s in steps[1:])
    assert all(s.prompt_tokens > 0 and s.seconds > 0 for s in steps)


def test_principle_choice_is_seeded_and_round_robin_cycles():
    c = load_constitution(HHH)
    picks = [choose_principle(c, "random", 7, "t1", 0, r).id for r in range(1, 9)]
    assert picks == [choose_principle(c, "random", 7, "t1", 0, r).id for r in range(1, 9)]
    assert picks != [choose_principle(c, "random", 8, "t1", 0, r).id for r in range(1, 9)]
    ids = [p.id for p in c.enabled_principles]
    assert [choose_principle(c, "round_robin", 0, "t", 2, r).id for r in (1, 2, 3)] == ids[2:5]


def test_few_shot_examples_come_before_the_conversation():
    c = load_constitution(HHH)
    chat = critique_chat("Q?", "A.", c.principles[0], c, few_shot=True)
    assert len(chat) == 6 * len(c.few_shot_examples) + 3
    assert chat[0]["content"] == c.few_shot_examples[0].prompt
    assert chat[-1]["content"] == c.principles[0].critique_request
    assert len(critique_chat("Q?", "A.", c.principles[0], c, few_shot=False)) == 3


def test_a_critique_with_a_stop_phrase_ends_the_trace(tiny_model_path, workspace, tmp_path):
    # Learn what the critic really says (seeded sampling, one prompt: the same draw every time),
    # then make that its stop phrase.
    backend = HFBackend(tiny_model_path)
    c = load_constitution(HHH)
    sampled = dict(temperature=1.0, min_new_tokens=6, principle_sampling="round_robin", limit=1)
    first = jobs.run("generate", config(tiny_model_path, rounds=1, early_stop=False, **sampled), workspace)
    critique = first.read("trace_steps")[1]["critique"]
    assert critique.strip()
    stopping = c.model_copy(update={"generation": c.generation.model_copy(update={"stop_phrases": [critique[:12]]})})
    path = save_constitution(stopping, tmp_path / "stopping.yaml") and tmp_path / "stopping.yaml"
    job = jobs.run(
        "generate",
        config(tiny_model_path, constitution=str(path), rounds=3, **sampled),
        workspace,
        backends=(backend, backend),
    )
    steps = job.read("trace_steps")
    assert [s["round"] for s in steps] == [0, 1]  # rounds 2 and 3 never ran
    assert steps[1]["stopped"] and steps[1]["response"] == steps[0]["response"]
    assert job.progress().status == "done" and job.progress().done == job.progress().total == 4


def test_rerunning_the_same_config_resumes_instead_of_duplicating(tiny_model_path, workspace):
    first = jobs.run("generate", config(tiny_model_path), workspace)
    second = jobs.run("generate", config(tiny_model_path), workspace)
    assert first.run_id == second.run_id
    assert len(second.read("trace_steps")) == 4 * 3


def test_cancel_stops_between_batches_and_resume_finishes(tiny_model_path, workspace):
    job = JobFolder.create(workspace.runs_dir, "cancelled-run", {"kind": "generate", "model": tiny_model_path})
    calls = collections.Counter()
    backend = HFBackend(tiny_model_path)

    class CancelDuringTheFirstCritique:  # a real backend; only the cancel request is timed by the test
        name, context_length, count_tokens = backend.name, backend.context_length, backend.count_tokens

        def generate(self, chats, params, on_done=None):
            calls["generate"] += 1
            if calls["generate"] == 2:
                job.request_cancel()
            return backend.generate(chats, params, on_done)

    cfg = config(tiny_model_path, run_id="cancelled-run", rounds=3)
    stopped = jobs.run("generate", cfg, workspace, backends=(CancelDuringTheFirstCritique(),) * 2)
    assert stopped.progress().status == "cancelled"
    # checked between the critiques and the revisions: round 1's revisions were never asked for
    assert calls["generate"] == 2
    assert len(stopped.read("trace_steps")) == 4  # the initial answers, nothing more
    finished = jobs.run("generate", cfg, workspace)
    assert finished.progress().status == "done"
    assert len(finished.read("trace_steps")) == 4 * 4


def _unique_steps(job):
    keys = [(s["trace_id"], s["round"]) for s in job.read("trace_steps")]
    assert len(keys) == len(set(keys)), "a step was stored twice"
    return set(keys)


@pytest.mark.processes
def test_kill_minus_nine_then_rerun_loses_and_duplicates_nothing(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    argv = [
        sys.executable,
        "-m",
        "cai_core.cli",
        "--data-dir",
        str(data),
        "generate",
        "--model",
        tiny_model_path,
        "--constitution",
        HHH,
        "--prompts",
        DEMO,
        "--rounds",
        "2",
        "--samples",
        "2",
        "--max-new-tokens",
        "24",
        "--chunk-size",
        "8",
        "--run-id",
        "killed",
    ]
    steps_file = data / "runs" / "killed" / "trace_steps.jsonl"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if steps_file.exists() and steps_file.read_text().count("\n") >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    job = JobFolder(data / "runs" / "killed")
    assert job.progress().status == "failed"  # a dead process reads as failed, not as running forever
    before = _unique_steps(job)
    with open(steps_file, "a") as f:
        f.write('{"trace_id": "killed:demo-01:0", "round": 9, "princ')  # a write torn by the kill
    assert subprocess.run(argv, capture_output=True).returncode == 0
    after = _unique_steps(job)
    assert before <= after
    assert len(after) == 24 * 2 * 3
    with Store.open(data / "cai.duckdb") as store:
        store.ingest(data / "runs")
        assert store.counts()["trace_steps"] == 24 * 2 * 3


def test_progress_is_readable_while_the_job_runs(tiny_model_path, workspace):
    seen = []
    jobs.run("generate", config(tiny_model_path), workspace, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    progress_file = json.loads((next(workspace.runs_dir.iterdir()) / "progress.json").read_text())
    assert progress_file["status"] == "done"


@pytest.mark.parametrize("bad", ["missing.jsonl", "bad.jsonl"])
def test_bad_prompt_files_fail_before_any_model_loads(bad, tmp_path, workspace):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{oops\n')
    from cai_core.prompts import PromptFileError

    with pytest.raises(PromptFileError, match=r"bad.jsonl(:2)?|no such prompt file"):
        jobs.run("generate", config("/no/such/model", prompts=str(tmp_path / bad)), workspace)
    assert not workspace.runs_dir.exists()


def test_a_cancel_before_the_job_starts_is_honoured_then_a_rerun_runs(tiny_model_path, workspace):
    cfg = config(tiny_model_path, rounds=1)
    jobs.prepare("generate", cfg, workspace).request_cancel()
    assert jobs.run("generate", cfg, workspace).progress().status == "cancelled"
    finished = jobs.run("generate", cfg, workspace)
    assert finished.progress().status == "done" and len(finished.read("trace_steps")) == 4 * 2


def test_try_it_streams_each_part_as_it_comes(tiny_model_path):
    backend, constitution = HFBackend(tiny_model_path), load_constitution(HHH)
    pid = constitution.enabled_principles[0].id
    params = SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=1.0, seed=5)
    seen = []
    result = critique_once(backend, constitution, pid, "hi", params=params, on_text=lambda *a: seen.append(a))
    parts = [part for part, _ in seen]
    assert parts == sorted(parts, key=["response", "critique", "revision"].index)  # in order, each several times
    assert all(parts.count(part) > 1 for part in ("response", "critique", "revision")), seen
    last = {part: text for part, text in seen}
    assert last == {"response": result.response, "critique": result.critique, "revision": result.revision}
    assert result == critique_once(backend, constitution, pid, "hi", params=params)  # the same round unwatched


def test_progress_moves_inside_a_batch_as_each_answer_comes(tiny_model_path, workspace, monkeypatch):
    from cai_core import job_runner

    monkeypatch.setattr(job_runner, "TICK_SECONDS", 0.01)
    backend = HFBackend(tiny_model_path, batch_size=1)  # the engine says "done" after each chat
    seen: list[int] = []
    cfg = config(tiny_model_path, limit=8, rounds=1, max_new_tokens=24, min_new_tokens=24)
    job = jobs.run(
        "generate", cfg, workspace, backends=(backend, backend), on_progress=lambda done, total: seen.append(done)
    )
    assert job.progress().status == "done" and job.progress().done == 16
    # one batch is the 8 answers, the next the 8 critique→revision rounds: counts between them came mid-batch
    assert set(seen) - {0, 8, 16}, seen
    assert seen == sorted(seen)  # and never went back
