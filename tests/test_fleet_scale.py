"""Issue 22's run at a size the suite can afford: 10k records through two simulated servers that fail, drop and
stall a few percent of requests on purpose, the generation job killed (-9) at 60% and resumed. It asserts the
counts (every record once, in the spool and in the store; every fault met counted in the job's log), never the
times: `benchmarks/bench_scale.py` measures those, with the same functions."""

from __future__ import annotations

import pytest

from benchmarks.bench_scale import FleetProcess, count_records, generate_job, label_job, log_incidents, work_job
from cai_core.store import Store
from cai_core.workspace import Workspace

from .fleet import FleetConfig

PROMPTS, ROUNDS, PAIRS = 2000, 2, 2000  # 2,000 traces + 6,000 steps + 2,000 labels


@pytest.mark.processes
def test_ten_thousand_records_through_two_faulty_servers_lose_and_double_nothing(tmp_path):
    workspace = Workspace(tmp_path / "data")
    config = FleetConfig(servers=2, concurrency=16, faults=0.04, stall=5.0, model="sim")
    with FleetProcess(config) as fleet:
        generation = generate_job(workspace, fleet.urls, PROMPTS, ROUNDS, max_new_tokens=8, chunk=256)
        *_, killed = work_job(workspace, generation.run_id, kill_at=0.6)
        assert killed, "the job ended before it could be killed at 60%"
        work_job(workspace, generation.run_id)
        before_labelling = fleet.totals()["faults"]
        labelling = label_job(workspace, fleet.urls, PAIRS, batch=128)
        work_job(workspace, labelling.run_id)
        faults = fleet.totals()["faults"] - before_labelling

    steps = PROMPTS * (ROUNDS + 1)
    assert generation.progress().status == labelling.progress().status == "done"
    assert count_records(generation, "traces") == (PROMPTS, PROMPTS)  # (lines, distinct): none lost or doubled
    assert count_records(generation, "trace_steps") == (steps, steps)
    assert count_records(labelling, "ai_labels") == (PAIRS, PAIRS)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        counts = store.counts()
    assert (counts["traces"], counts["trace_steps"], counts["ai_labels"]) == (PROMPTS, steps, PAIRS)

    # Every failure injected while the labelling job ran (a job nobody killed) is in its log: a 500 or 429 as
    # itself, a dropped connection as dropped; a stall is answered late, so it shows as a hedge rather than a failure.
    met = log_incidents(labelling)
    assert faults["http_500"] and faults["http_429"] and faults["dropped"] and faults["stalled"], faults
    assert met["HTTP 500"] == faults["http_500"] and met["HTTP 429"] == faults["http_429"], (met, faults)
    assert met["dropped"] == faults["dropped"], (met, faults)
    assert met["hedged"] >= 1, met
    assert log_incidents(generation)["HTTP 500"] >= 1  # the killed and resumed job logged its share too
