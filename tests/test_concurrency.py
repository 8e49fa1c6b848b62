"""Many browser sessions at once while a job is being ingested: every label stored, no error, overlap exact.

Each session works as a page does (`pages.connect`): every script run opens its own connection, ingests
what jobs spooled, and reads; a save opens another. A background job appends records meanwhile."""

import multiprocessing
import threading
import time
from collections import Counter

import pytest

from cai_core.jobs import JobFolder
from cai_core.records import HumanLabel, Pair, Trace, TraceStep, to_row
from cai_core.store import PairQueue, Store

# 20 sessions at once is the contention that matters; 20 labels each (400 in all) meet it as 50 did, in less time
SESSIONS, LABELS_EACH, OVERLAP = 20, 20, 2


@pytest.mark.processes
def test_twenty_sessions_label_while_a_job_is_ingested(workspace):
    pairs = SESSIONS * LABELS_EACH // OVERLAP + SESSIONS  # the last pairs with room may all hold a label of yours
    with Store.open(workspace) as store:
        store.add_pairs([Pair(f"p{i:04d}", f"prompt {i}", "a", "b", "import", "f", i, "a", "b") for i in range(pairs)])
    job = JobFolder.create(workspace.runs_dir, "gen-busy", {"kind": "generate", "model": "m", "config": {}})
    errors, done = [], threading.Event()

    def background_job():
        batch = 0
        while not done.is_set():  # a generation job spooling traces and progress the whole time
            ids = [f"gen-busy:b{batch}:p{i}" for i in range(5)]
            traces = [Trace(trace_id, "gen-busy", trace_id, "q", "", 0, "m", "C", "v1") for trace_id in ids]
            job.append("traces", [to_row(t) for t in traces])
            job.append("trace_steps", [to_row(TraceStep(t.trace_id, 0, None, None, "a", 1, 0, 1, 0.1)) for t in traces])
            job.set_progress("running", batch, 0)
            batch += 1
            time.sleep(0.1)

    def session(name):
        try:
            for _ in range(LABELS_EACH):
                with Store.open(workspace) as store:  # a page run
                    store.ingest(workspace.runs_dir)
                    item = store.next_annotation(name, PairQueue(overlap=OVERLAP))
                with Store.open(workspace) as store:  # the Submit click
                    store.save_human_label(item.label(name, "a"))
        except Exception as exc:  # noqa: BLE001 - every error is reported by the assertion below
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    writer = threading.Thread(target=background_job)
    sessions = [threading.Thread(target=session, args=(f"annotator-{n}",)) for n in range(SESSIONS)]
    started = time.perf_counter()
    writer.start()
    for t in sessions:
        t.start()
    for t in sessions:
        t.join(timeout=600)
    done.set()
    writer.join()
    seconds = time.perf_counter() - started
    print(f"{SESSIONS} sessions x {LABELS_EACH} labels while a job was ingested: {seconds:.1f} s")

    assert errors == []
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        labels = store.human_labels()
        assert len(labels) == SESSIONS * LABELS_EACH
        per_pair = Counter(label.pair_id for label in labels)
        assert max(per_pair.values()) == OVERLAP  # overlap exact: never a label more than wanted
        assert sum(n < OVERLAP for n in per_pair.values()) <= SESSIONS  # pairs are filled, not spread thin
        assert store.count_traces() == len(job.read("traces")) > 0  # the job lost nothing either
        assert store.counts()["trace_steps"] == len(job.read("trace_steps"))
        assert store.ingest_problems() == []


PROCESSES, SAVES_EACH = 6, 15


def _save_and_read_back(db: str, annotator: str, pair_ids: list[str], lost) -> None:
    """One process: each label saved on a connection of its own, then read back on the next (as the Annotate
    page's save and its next claim do). A save that returned and is not read back is lost."""
    for pair_id in pair_ids:
        with Store.open(db, wait_seconds=120) as store:
            store.save_human_label(HumanLabel(pair_id, annotator, "a"))
        with Store.open(db, wait_seconds=120) as store:
            if not store.human_labels(annotator=annotator, pair_id=pair_id):
                lost.append((annotator, pair_id))


@pytest.mark.processes
def test_a_save_that_returned_is_stored_with_many_processes_on_one_file(workspace):
    with Store.open(workspace) as store:
        store.add_pairs([Pair(f"p{i:04d}", "q", "a", "b", "import", "f", i, "a", "b") for i in range(SAVES_EACH)])
    context = multiprocessing.get_context("fork")
    lost = context.Manager().list()
    processes = [
        context.Process(
            target=_save_and_read_back,
            args=(str(workspace.db_path), f"annotator-{n}", [f"p{i:04d}" for i in range(SAVES_EACH)], lost),
        )
        for n in range(PROCESSES)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    print(f"{PROCESSES} processes x {SAVES_EACH} saves: {time.perf_counter() - started:.1f} s, {len(lost)} lost")
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    assert list(lost) == []
    with Store.open(workspace) as store:
        assert len(store.human_labels()) == PROCESSES * SAVES_EACH
