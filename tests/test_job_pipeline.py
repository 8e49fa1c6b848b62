"""A job on a fleet keeps several batches in flight (`jobs.PipelinedWork`): one request that runs long holds back
its own batch, never the fleet; and a kill -9 while batches are in flight, then a resume, loses and doubles
nothing. Asserted on the fleet's and the spool's counts, never on times."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.bench_scale import FleetProcess, count_records, generate_job, label_job, work_job
from cai_core import jobs
from cai_core.backends import openai_compat
from cai_core.critique import GenerateConfig
from cai_core.key_set import KeySet
from cai_core.store import Store
from cai_core.workspace import Workspace

from .fleet import FleetConfig, running

PROMPTS, ROUNDS = 300, 1


def test_a_request_that_runs_long_holds_back_its_batch_not_the_fleet(tmp_path, monkeypatch):
    # A long request, not a stall: a second copy would take as long, so none is sent.
    monkeypatch.setattr(openai_compat, "HEDGE_MIN_SECONDS", 3600.0)
    workspace = Workspace(tmp_path / "data")
    # The fleet's 40th request answers only once the fleet has answered 200 others, or after 60 s. A job that waits
    # for each batch's last request before it sends the next has at most its batch's 15 others to give.
    config = FleetConfig(servers=2, concurrency=4, hold_nth=40, hold_for=200, stall=60.0, model="sim")
    with running(config) as fleet:
        job = generate_job(workspace, fleet.urls, PROMPTS, ROUNDS, max_new_tokens=4, chunk=16)
        jobs.run("generate", GenerateConfig(**job.spec["config"]), workspace)
        held = sum((stats.held for stats in fleet.stats()), Counter())

    assert held == {"by traffic": 1}, held
    steps = PROMPTS * (ROUNDS + 1)
    assert job.progress().status == "done" and job.progress().done == steps
    assert count_records(job, "trace_steps") == (steps, steps)  # (lines, distinct keys)


@pytest.mark.processes
def test_a_label_job_killed_with_batches_in_flight_resumes_losing_and_doubling_nothing(tmp_path):
    workspace = Workspace(tmp_path / "data")
    pairs = 3000
    with FleetProcess(
        FleetConfig(servers=2, concurrency=8, latency=0.01, faults=0.02, stall=5.0, model="sim")
    ) as fleet:
        # batches of 16 pairs (32 chats) on 16 slots: three batches in flight at any moment
        job = label_job(workspace, fleet.urls, pairs, batch=16)
        *_, killed = work_job(workspace, job.run_id, kill_at=0.5)
        assert killed, "the job ended before it could be killed at 50%"
        assert 0 < job.progress().done < pairs
        work_job(workspace, job.run_id)

    assert job.progress().status == "done" and job.progress().done == pairs
    assert count_records(job, "ai_labels") == (pairs, pairs)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        assert store.counts()["ai_labels"] == pairs


def test_a_key_set_knows_its_keys_and_counts_a_key_spooled_twice_once():
    keys = KeySet(iter(["a\0x", "b\0x", "a\0x", ""]))
    assert len(keys) == 3
    assert "a\0x" in keys and "" in keys and "b\0x" in keys
    assert "a\0y" not in keys and "c" not in keys
    assert "a" not in KeySet(iter([]))
