"""Run lists at scale (issue 22): the Train page's registry and the job cards page through their runs instead of
drawing every one, and the store reads one page of the registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cai_core.jobs import JobFolder
from cai_core.store import Store
from cai_core.workspace import Workspace

from .app_pages import open_page
from .browser.seed import copy_constitutions


def finished_runs(workspace: Workspace, kind: str, n: int) -> list[str]:
    """N finished job folders of KIND, the first one oldest; their ids, newest first."""
    ids = [f"{kind}-{i:03d}" for i in range(n)]
    for i, run_id in enumerate(ids):
        job = JobFolder.create(workspace.runs_dir, run_id, {"kind": kind, "model": "some-model", "config": {}})
        job.set_progress("done", 1, 1)
        os.utime(job.path, (1_000_000 + i, 1_000_000 + i))  # listings go newest first, by the folder's time
    return ids[::-1]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    copy_constitutions(tmp_path / "constitutions")
    monkeypatch.setenv("CAI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(tmp_path / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    return Workspace(tmp_path / "data")


def test_the_store_reads_one_page_of_the_training_registry(workspace):
    ids = finished_runs(workspace, "train-sft", 5)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        assert sorted(store.train_runs(run_ids=ids[:2]).run_id) == sorted(ids[:2])
        assert len(store.train_runs()) == 5


def test_the_training_registry_pages_through_more_runs_than_a_page_holds(workspace):
    ids = finished_runs(workspace, "train-sft", 23)
    at = open_page("pages/4_Train.py")
    [registry] = [d.value for d in at.dataframe if "run" in d.value.columns]
    assert list(registry.run) == ids[:20]  # the newest page, not every run
    assert at.selectbox(key="train_run").options == ids[:20]
    at.number_input(key="train_runs_page").set_value(2).run()
    assert not at.exception, at.exception
    [registry] = [d.value for d in at.dataframe if "run" in d.value.columns]
    assert list(registry.run) == ids[20:]
    assert at.selectbox(key="train_run").value == ids[20]


def test_the_generate_page_run_cards_page_through_older_runs(workspace):
    ids = finished_runs(workspace, "generate", 12)
    at = open_page("pages/3_Generate.py")
    shown = "\n".join(t.value for t in at.text)
    assert ids[0] in shown and ids[-1] not in shown  # ten cards, the newest
    at.number_input(key="refresh_runs_page").set_value(2).run()
    assert not at.exception, at.exception
    shown = "\n".join(t.value for t in at.text)
    assert ids[-1] in shown and ids[0] not in shown


def test_with_no_queue_in_use_the_agreement_figures_read_none_of_a_runs_labels(workspace, monkeypatch):
    from cai_core.judge_audit import queue_tightening

    def whole_run(self, run_id):
        raise AssertionError(f"read every label of {run_id} for a queue nobody uses")

    monkeypatch.setattr(Store, "queue_score_inputs", whole_run)
    monkeypatch.setattr(Store, "queue_scores", whole_run)
    with Store.open(workspace) as store:
        assert queue_tightening(store, "some-label-run").empty


def test_an_annotators_own_labels_are_listed_a_page_at_a_time(workspace):
    from cai_core.records import HumanLabel

    from .browser.seed import seed_pairs

    seed_pairs(workspace, workspace.root.parent / "constitutions" / "hhh.yaml", n=55)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        pair_ids = [p.pair_id for p in store.pairs()]
        store.import_human_labels(
            [HumanLabel(p, "ann", "a", False, "", float(i), float(i)) for i, p in enumerate(pair_ids)]
        )
    at = open_page("pages/5_Annotate.py")
    at.text_input(key="annotator").set_value("ann").run()
    newest = pair_ids[::-1]
    assert at.selectbox(key="reopen").options == ["(none)", *newest[:50]]  # one page, not all 55
    at.number_input(key="my_labels_page").set_value(2).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="reopen").options == ["(none)", *newest[50:]]


def test_ingest_with_nothing_new_looks_for_no_file_a_job_never_wrote(workspace, monkeypatch):
    """Every page's redraw ingests first: with 200 runs, a look for each of the dozen tables a job might spool
    into was most of a redraw's cost."""
    finished_runs(workspace, "generate", 3)
    looked = []
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self, **kw: looked.append(self.name) or real_exists(self, **kw))
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        looked.clear()
        assert store.ingest(workspace.runs_dir) == 0
    assert not [name for name in looked if name.endswith(".jsonl")]


def test_the_export_tab_counts_the_rows_and_makes_none_until_asked(workspace, monkeypatch):
    import cai_core.export_job
    import cai_core.exports

    from .browser.seed import seed_traces

    seed_traces(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")

    def made(*args, **kwargs):
        raise AssertionError("the export's rows were made at a redraw")

    # and in the module that holds it by name, imported before: imported first under the patch, it would keep
    # `made` for every later test on this worker (`cai export` failed so under three workers)
    for module in (cai_core.exports, cai_core.export_job):
        monkeypatch.setattr(module, "export_rows", made)
    at = open_page("pages/9_Data.py")
    assert "2 rows match." in [t.value for t in at.text]  # the two seeded traces, each with a revision
    with Store.open(workspace) as store:
        for revised_only in (False, True):
            assert store.count_final_steps(revised_only=revised_only) == len(
                store.final_steps(revised_only=revised_only)
            )


def test_a_listing_reads_a_finished_jobs_files_once_and_again_only_when_they_change(workspace, monkeypatch):
    """A page lists its kind of job several times a redraw: reading 200 jobs' run.json was ~28 ms a listing."""
    from cai_core.jobs import list_job_folders

    labels = finished_runs(workspace, "label", 3)
    generations = finished_runs(workspace, "generate", 2)
    later(monkeypatch, 10)
    assert [job.run_id for job in list_job_folders(workspace.runs_dir, kinds=("label",))] == labels
    read = count_job_file_reads(monkeypatch)
    assert [job.run_id for job in list_job_folders(workspace.runs_dir, kinds=("label",))] == labels
    assert sorted(job.run_id for job in list_job_folders(workspace.runs_dir)) == sorted(generations + labels)
    assert read == []
    (workspace.runs_dir / labels[0] / "progress.json").write_text("{", encoding="utf-8")
    assert [job.run_id for job in list_job_folders(workspace.runs_dir, kinds=("label",))] == labels[1:]


def test_the_label_gate_reuses_the_dashboards_counts_until_the_store_writes(workspace, monkeypatch):
    from cai_core.agreement import dashboard
    from cai_core.label_gate import gate
    from cai_core.records import HumanLabel

    from .browser.seed import SEED_LABEL_RUN, seed_pairs

    seed_pairs(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")
    counted = []
    real = Store._agreement_cells
    monkeypatch.setattr(Store, "_agreement_cells", lambda self, *args: counted.append(args) or real(self, *args))
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        first = dashboard(store, run_ids=[SEED_LABEL_RUN]).by_run
        gate(store, SEED_LABEL_RUN)
        assert len(counted) == 1  # the gate's dashboard over the same labels read the same counts
        store.save_human_label(HumanLabel("seed-pair-00", "ann", "a"))
        after = dashboard(store, run_ids=[SEED_LABEL_RUN]).by_run
        assert len(counted) == 2  # a write forgets them: the new label is counted
    assert after.labels_with_ties.sum() == first.labels_with_ties.sum() + 1


def test_the_export_count_matches_the_rows_whatever_the_filters(workspace):
    from .browser.seed import FOUR_ROUNDS, seed_traces

    seed_traces(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        version = store.trace(FOUR_ROUNDS)[0].constitution_version
        for filters in ({}, {"max_round": 1}, {"constitution_version": version}, {"run_id": "none-such"}):
            for revised_only in (False, True):
                rows = store.final_steps(**filters, revised_only=revised_only)
                assert store.count_final_steps(**filters, revised_only=revised_only) == len(rows), filters


def count_job_file_reads(monkeypatch) -> list[str]:
    """The run.json and progress.json files read from now on, by name."""
    read = []
    real_spec, real_progress = JobFolder.spec.fget, JobFolder.recorded_progress
    monkeypatch.setattr(JobFolder, "spec", property(lambda self: read.append("run.json") or real_spec(self)))
    monkeypatch.setattr(
        JobFolder, "recorded_progress", lambda self: read.append("progress.json") or real_progress(self)
    )
    return read


def later(monkeypatch, seconds: float) -> None:
    """The job files' clock, SECONDS ahead: the job files written just now are as old as a finished job's."""
    from cai_core import job_folder

    real = job_folder._now_ns
    monkeypatch.setattr(job_folder, "_now_ns", lambda: real() + int(seconds * 1e9))


def test_ingest_reads_a_finished_jobs_files_again_only_when_they_change_even_after_a_restart(workspace, monkeypatch):
    """Every page's redraw ingests first: reading 200 jobs' run.json and progress.json was ~50 ms of it."""
    ids = finished_runs(workspace, "generate", 3)
    changed = JobFolder(workspace.runs_dir / ids[0])
    changed.set_progress("done", 1, 1, message="a")
    later(monkeypatch, 10)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
    read = count_job_file_reads(monkeypatch)
    real_records_path = JobFolder.records_path
    monkeypatch.setattr(
        JobFolder, "records_path", lambda self, table: read.append(table) or real_records_path(self, table)
    )
    with Store.open(workspace) as store:  # a new connection, as after the app's restart: the stamps are stored
        store.ingest(workspace.runs_dir)
        assert read == []  # nor a path made for each table the job might have spooled into
        before = os.stat(changed.path / "progress.json")
        changed.set_progress("done", 1, 1, message="b")
        os.utime(changed.path / "progress.json", ns=(before.st_atime_ns, before.st_mtime_ns))  # its mtime as before
        store.ingest(workspace.runs_dir)
        assert read.count("progress.json") == 1
        assert store.runs("generate").set_index("run_id").message[ids[0]] == "b"


def test_ingest_keeps_reading_a_job_file_written_within_its_file_systems_timestamp_granularity(workspace, monkeypatch):
    finished_runs(workspace, "generate", 1)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)  # its files were written just now: their stat is not to be trusted yet
        read = count_job_file_reads(monkeypatch)
        store.ingest(workspace.runs_dir)
        assert read.count("progress.json") == 1
        later(monkeypatch, 10)
        store.ingest(workspace.runs_dir)  # settled now: read once more, then kept
        read.clear()
        store.ingest(workspace.runs_dir)
        assert read == []


def test_a_running_jobs_files_are_read_at_every_ingest(workspace, monkeypatch):
    """Its progress says whether its process is alive: a stat cannot tell that it died."""
    job = JobFolder.create(workspace.runs_dir, "gen-running", {"kind": "generate", "model": "m", "config": {}})
    job.set_progress("running", 0, 1, pid=os.getpid())
    later(monkeypatch, 10)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        read = count_job_file_reads(monkeypatch)
        store.ingest(workspace.runs_dir)
        assert read.count("progress.json") == 1


@pytest.mark.processes
def test_the_traces_run_filter_offers_a_page_of_runs_and_finds_the_others(workspace):
    from benchmarks.bench_pages import add_traces

    add_traces(workspace.runs_dir, 60, runs=60)
    runs = [f"bench-run-{i:03d}" for i in range(60)]
    at = open_page("pages/2_Traces.py")
    assert at.selectbox(key="filter_run_id").options == ["(any)", *runs[:50]]  # a page, not all 60
    at.number_input(key="filter_run_id_page").set_value(2).run()
    assert at.selectbox(key="filter_run_id").options == ["(any)", *runs[50:]]
    at.selectbox(key="filter_run_id").set_value("bench-run-055").run()
    at.text_input(key="filter_run_id_search").set_value("RUN-00").run()
    assert not at.exception, at.exception
    # the search starts at its first page; the run chosen stays offered and chosen
    assert at.selectbox(key="filter_run_id").options == ["(any)", "bench-run-055", *runs[:10]]
    assert "1 trace match." in at.caption[0].value


@pytest.mark.processes
def test_the_data_pages_run_filters_offer_a_page_of_runs(workspace):
    from benchmarks.bench_pages import add_traces

    add_traces(workspace.runs_dir, 60, runs=60)
    labels = finished_runs(workspace, "label", 55)
    at = open_page("pages/9_Data.py")
    runs = [f"bench-run-{i:03d}" for i in range(60)]
    for key in ("slcai_run", "export_run"):
        assert at.selectbox(key=key).options == ["all", *runs[:50]], key
    at.selectbox(key="export_kind").set_value("preferences").run()
    named = ["the latest AI label run", "people's labels"]
    assert at.selectbox(key="export_labels").options == [*named, *labels[:50]]
    at.text_input(key="export_labels_search").set_value("label-00").run()
    assert at.selectbox(key="export_labels").options == [*named, *labels[-10:]]


# what the Agreement and Data pages count over every label or every trace step (a quarter second each at 1M labels)
COUNTS_OVER_EVERYTHING = ("_agreement_cells", "_alpha_counts", "_disagreements", "_count_final_steps")


def test_a_redraw_with_nothing_new_counts_nothing_again_until_the_store_writes(workspace, monkeypatch):
    from cai_core.records import HumanLabel

    from .browser.seed import seed_pairs, seed_traces

    seed_pairs(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")
    seed_traces(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")
    counted = []
    for name in COUNTS_OVER_EVERYTHING:
        real = getattr(Store, name)
        monkeypatch.setattr(Store, name, lambda self, *a, real=real, name=name: counted.append(name) or real(self, *a))
    agreement, data = open_page("pages/6_Agreement.py"), open_page("pages/9_Data.py")
    assert {"_agreement_cells", "_count_final_steps"} <= set(counted)
    counted.clear()
    agreement.run()
    data.run()
    assert not agreement.exception and not data.exception
    assert counted == []  # each redraw opened a connection of its own: the counts were kept across them
    with Store.open(workspace) as store:
        store.save_human_label(HumanLabel("seed-pair-00", "ann", "a"))
    agreement.run()
    assert "_agreement_cells" in counted  # a write moved the data on: the new label is counted


def count_ingests(monkeypatch) -> list[str]:
    ingested = []
    real = Store.ingest
    monkeypatch.setattr(Store, "ingest", lambda self, runs_dir: ingested.append(runs_dir) or real(self, runs_dir))
    return ingested


def test_a_redraw_ingests_at_each_connection_while_a_job_is_at_work(workspace, monkeypatch):
    """A running job may spool between the sidebar's connection and the page's: the page takes that in."""
    job = JobFolder.create(workspace.runs_dir, "gen-running", {"kind": "generate", "model": "m", "config": {}})
    job.set_progress("running", 0, 1, pid=os.getpid())
    at = open_page("pages/9_Data.py")
    ingested = count_ingests(monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert len(ingested) >= 2


def test_the_preferences_count_matches_its_rows_and_a_redraw_makes_none(workspace, monkeypatch):
    """The Data page counted the preference rows by making them: 250k pairs' rows at every redraw."""
    import cai_core.exports
    from cai_core.exports import ExportFilter, export_count, export_rows
    from cai_core.label_gate import GateRule
    from cai_core.records import HumanLabel

    from .browser.seed import SEED_LABEL_RUN, seed_pairs

    pairs = seed_pairs(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        store.import_human_labels(
            [HumanLabel(pair.pair_id, f"person-{i % 2}", "ab"[i % 3 == 0]) for i, pair in enumerate(pairs)]
        )
        for filters in (
            ExportFilter(),
            ExportFilter(min_confidence=0.3),
            ExportFilter(run_id="human"),
            ExportFilter(run_id=SEED_LABEL_RUN, raw_labels=True),
            ExportFilter(gate=GateRule(min_human_labels=1, unjudged="drop")),
            ExportFilter(run_id="none-such"),
        ):
            assert export_count(store, "preferences", filters) == len(export_rows(store, "preferences", filters))
        assert export_count(store, "preferences") > 0

    def made(*args, **kwargs):
        raise AssertionError("the preference rows were made at a redraw")

    monkeypatch.setattr(cai_core.exports, "preference_rows", made)
    at = open_page("pages/9_Data.py")
    at.selectbox(key="export_kind").set_value("preferences").run()
    assert not at.exception, at.exception
    assert any(t.value.endswith("rows match.") for t in at.text)


def test_leaving_the_annotate_page_gives_back_the_pairs_and_the_audit_item_held_there(workspace):
    """Held for CLAIM_SECONDS (30 min) after the person went to another page, nobody else was handed them."""
    from cai_core.grader_audit import send_sample

    from .browser.seed import seed_pairs
    from .test_grader_audit import RUN, seed_eval_run

    seed_pairs(workspace, workspace.root.parent / "constitutions" / "hhh.yaml")
    seed_eval_run(workspace)
    with Store.open(workspace) as store:
        send_sample(store, RUN, size=3)
    at = open_page("pages/5_Annotate.py")
    at.text_input(key="annotator").input("ann").run()
    at.radio(key="label_queue").set_value("refusal").run()
    at.run()  # a redraw of the Annotate page keeps what is held there
    assert not at.exception, at.exception

    def held() -> set[tuple[str, str]]:
        with Store.open(workspace) as store:
            claims = store.con.execute("SELECT 'pair', pair_id FROM annotation_claims WHERE annotator = 'ann'")
            pairs = set(claims.fetchall())
            audits = store.con.execute("SELECT 'audit', item_id FROM grader_audit_claims WHERE annotator = 'ann'")
            return pairs | set(audits.fetchall())

    [(_, item)] = [claim for claim in held() if claim[0] == "audit"]
    at.radio(key="label_queue").set_value("pairs").run()
    assert {kind for kind, _ in held()} == {"pair", "audit"}
    at.switch_page("pages/9_Data.py").run()
    assert not at.exception, at.exception
    assert held() == set()
    with Store.open(workspace) as store:
        assert store.claim_grader_item("bo", RUN, "refusal", overlap=1).item_id == item  # the first, handed on
