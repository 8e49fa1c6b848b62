import contextlib
import os
import subprocess
import sys
import textwrap

import pytest

from cai_core.jobs import JobFolder
from cai_core.records import HumanLabel, Pair, StepVerdict, Trace, TraceStep, to_row
from cai_core.store import MIGRATIONS, Store, StoreError, TraceFilter
from cai_core.workspace import PROJECT_ROOT


def spool_traces(job: JobFolder, n: int, rounds: int = 2, text: str = "answer") -> None:
    traces = [
        Trace(
            f"{job.run_id}:p{i}:0",
            job.run_id,
            f"p{i}",
            f"prompt {i}",
            "benign",
            0,
            "m",
            "C",
            "v1",
            created_at=1000.0 + i,
        )
        for i in range(n)
    ]
    job.append("traces", [to_row(t) for t in traces])
    job.append(
        "trace_steps",
        [
            to_row(
                TraceStep(
                    t.trace_id,
                    r,
                    None if r == 0 else "harm",
                    None if r == 0 else "c",
                    f"{text} {t.prompt_id} r{r}",
                    3,
                    2,
                    1,
                    0.1,
                )
            )
            for t in traces
            for r in range(rounds + 1)
        ],
    )


def make_job(workspace, run_id="run-a"):
    return JobFolder.create(workspace.runs_dir, run_id, {"kind": "generate", "model": "m"})


def test_migrations_run_once(workspace):
    with Store.open(workspace) as store:
        assert store.schema_version == len(MIGRATIONS)
    with Store.open(workspace) as store:  # reopening applies nothing twice
        assert store.schema_version == len(MIGRATIONS)


def test_ingest_is_idempotent_and_reads_only_new_lines(workspace):
    job = make_job(workspace)
    spool_traces(job, 3)
    with Store.open(workspace) as store:
        assert store.ingest(workspace.runs_dir) == 3 + 9
        assert store.ingest(workspace.runs_dir) == 0
    spool_traces(JobFolder(job.path), 3)  # the same records again, as a resumed job might write them
    with open(job.records_path("trace_steps"), "a") as f:
        f.write('{"trace_id": "torn')  # a line still being written
    with Store.open(workspace) as store:
        assert store.ingest(workspace.runs_dir) == 0
        assert store.counts()["trace_steps"] == 9
        assert store.runs().run_id.tolist() == ["run-a"]


JOB_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_store import spool_traces
    from cai_core.jobs import JobFolder
    from pathlib import Path
    for batch in range(5):
        job = JobFolder.create(Path({runs!r}), f"background-{{batch}}", {{"kind": "generate", "model": "m"}})
        spool_traces(job, 20)
        time.sleep(0.05)
    print("wrote")
""")


def test_a_job_writes_while_the_app_holds_the_database_and_nothing_is_lost(workspace):
    with Store.open(workspace) as app_store:  # the app's connection, open the whole time
        app_store.ingest(workspace.runs_dir)
        script = JOB_SCRIPT.format(root=str(PROJECT_ROOT), runs=str(workspace.runs_dir))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert app_store.ingest(workspace.runs_dir) == 5 * (20 + 60)
        assert app_store.counts()["traces"] == 100


def test_a_second_process_gets_a_clear_error_while_the_file_is_held(workspace):
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from cai_core.store import Store, StoreError\n"
        "try:\n    Store.open(sys.argv[2], wait_seconds=0.5).__enter__()\n"
        "except StoreError as e:\n    print(e); sys.exit(3)"
    )
    with Store.open(workspace):
        out = subprocess.run(
            [sys.executable, "-c", probe, str(PROJECT_ROOT), str(workspace.db_path)], capture_output=True, text=True
        )
    assert out.returncode == 3
    assert "is held by another process" in out.stdout and str(workspace.db_path) in out.stdout
    assert "Traceback" not in out.stderr


def test_pages_filters_and_search_never_load_everything(workspace):
    spool_traces(make_job(workspace), 30, text="alpha")
    spool_traces(make_job(workspace, "run-b"), 5, text="beta")
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        page = store.trace_page(TraceFilter(run_id="run-a"), limit=10, offset=10)
        assert len(page) == 10 and set(page.run_id) == {"run-a"} and set(page.rounds) == {2}
        assert store.count_traces(TraceFilter(run_id="run-a")) == 30
        assert store.count_traces(TraceFilter(text="BETA p3")) == 1
        assert store.count_traces(TraceFilter(principle_id="harm")) == 35
        assert store.count_traces(TraceFilter(principle_id="nope")) == 0
        all_ids = [tid for off in range(0, 35, 10) for tid in store.trace_page(limit=10, offset=off).trace_id]
        assert len(all_ids) == len(set(all_ids)) == 35


def test_verdicts_are_stored_edited_and_counted(workspace):
    spool_traces(make_job(workspace), 1)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        store.save_verdict(StepVerdict("run-a:p0:0", 1, "ana", "better", "valid", "good"))
        store.save_verdict(StepVerdict("run-a:p0:0", 1, "ana", "worse", "valid", "changed my mind"))
        store.save_verdict(StepVerdict("run-a:p0:0", 2, "bo", "same", None))
        assert [(v.round, v.annotator, v.revision_verdict) for v in store.verdicts("run-a:p0:0")] == [
            (1, "ana", "worse"),
            (2, "bo", "same"),
        ]
        counts = {(r.aspect, r.verdict): r.n for r in store.verdict_counts().itertuples()}
        assert counts == {("revision", "worse"): 1, ("revision", "same"): 1, ("critique", "valid"): 1}
        with pytest.raises(KeyError, match="has no round 7"):
            store.save_verdict(StepVerdict("run-a:p0:0", 7, "ana", "better", None))
        with pytest.raises(ValueError, match="annotator"):
            store.save_verdict(StepVerdict("run-a:p0:0", 1, " ", "better", None))


def test_constitution_history_keeps_every_save(workspace, tmp_path):
    from cai_core.constitution import load_constitution

    c = load_constitution(PROJECT_ROOT / "constitutions" / "customer_service.yaml")
    changed = c.model_copy(update={"description": "edited"})
    with Store.open(workspace) as store:
        store.record_constitution(c, tmp_path / "cs.yaml", "first")
        store.record_constitution(changed, tmp_path / "cs.yaml", "second")
        history = store.constitution_history(tmp_path / "cs.yaml")
        assert history.note.tolist() == ["second", "first"]
        assert history.version.tolist() == [changed.version, c.version]
        assert store.constitution_text(c.version) == c.to_yaml()


def test_a_database_path_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder for database"):
        Store.open(tmp_path / "file" / "cai.duckdb").__enter__()


@contextlib.contextmanager
def tmpfs(path, options):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_a_read_only_database_folder_is_a_clear_error(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro, pytest.raises(StoreError, match="cannot open database"):
        Store.open(ro / "cai.duckdb").__enter__()


def test_a_full_disk_is_a_clear_error_and_the_spooled_records_survive(workspace, tmp_path):
    job = make_job(workspace)
    spool_traces(job, 200)
    spooled = job.records_path("trace_steps").read_bytes()
    with (
        tmpfs(tmp_path / "full", "size=300k") as full,
        pytest.raises(StoreError, match=str(full)),
        Store.open(full / "cai.duckdb") as store,
    ):
        with contextlib.suppress(OSError), open(full / "ballast", "wb") as f:
            f.write(b"\0" * 1_000_000)  # fill the disk to the last byte
        store.ingest(workspace.runs_dir)
    assert job.records_path("trace_steps").read_bytes() == spooled


def fill_disk(folder, leave: int) -> None:
    """Fill FOLDER's file system until LEAVE bytes are free."""
    ballast = folder / "ballast"
    ballast.unlink(missing_ok=True)
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with contextlib.suppress(OSError), open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_first_open_on_a_full_disk_leaves_no_file_that_cannot_be_opened(tmp_path):
    with tmpfs(tmp_path / "full", "size=4m") as full:
        fill_disk(full, 0)
        with pytest.raises(StoreError, match="No space left on device"):
            Store.open(full / "cai.duckdb").__enter__()
        assert not (full / "cai.duckdb").exists()
        (full / "ballast").unlink()  # space comes back: the app and the CLI open it as if nothing had happened
        with Store.open(full / "cai.duckdb") as store:
            assert store.schema_version == len(MIGRATIONS)


def test_an_empty_database_file_left_by_a_failed_first_open_is_made_anew(workspace):
    workspace.db_path.parent.mkdir(parents=True)
    workspace.db_path.touch()  # what a first open on a full disk left before databases were made under another name
    with Store.open(workspace) as store:
        assert store.schema_version == len(MIGRATIONS)


def test_no_full_disk_moment_during_a_label_save_loses_the_label(tmp_path):
    """At every amount of space left, from none to more than a checkpoint needs, a label save either fails (the
    caller still holds the label: the Annotate panel keeps it and sends it again) or is stored."""
    pairs = [Pair(f"p{i:02d}", "q", "a", "b", "import", "f", i, "a", "b") for i in range(40)]
    outcomes = {}
    with tmpfs(tmp_path / "full", "size=8m") as full:
        db = full / "cai.duckdb"
        with Store.open(db) as store:
            store.add_pairs(pairs)
        for pair, leave in zip(pairs, [0, 1, 2, 4, 8, 16, 32, 64, 128, 200, 256, 300, 400, 600, 1024], strict=False):
            fill_disk(full, leave * 1024)
            label = HumanLabel(pair.pair_id, "ann", "a", False, f"left {leave} KiB")
            try:
                with Store.open(db) as store:
                    store.save_human_label(label)
                outcomes[pair.pair_id] = "returned"
            except StoreError:
                outcomes[pair.pair_id] = "failed"
        (full / "ballast").unlink()
        with Store.open(db) as store:
            stored = {label.pair_id for label in store.human_labels()}
    returned = {pair_id for pair_id, outcome in outcomes.items() if outcome == "returned"}
    assert returned - stored == set()  # a save that returned is stored
    assert "failed" in outcomes.values() and returned  # the disk was full for some, not for all
