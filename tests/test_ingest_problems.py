"""One bad file never stops ingest: a malformed line or a broken run.json is kept out, named, and reported."""

import json

from cai_core.jobs import JobFolder
from cai_core.store import Store

from .app_pages import open_page
from .test_store import make_job, spool_traces


def insert_line(path, index, text):
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(index, text + "\n")
    path.write_text("".join(lines))


def test_a_bad_line_mid_file_is_quarantined_with_its_file_and_line_and_the_rest_goes_in(workspace):
    broken, healthy = make_job(workspace, "run-a"), make_job(workspace, "run-b")
    spool_traces(broken, 4)
    spool_traces(healthy, 2)
    steps = broken.records_path("trace_steps")
    insert_line(steps, 2, '{"trace_id": "run-a:p9:0", "round": 0, "response": "Unterminated')  # line 3
    good = json.loads(steps.read_text().splitlines()[0])
    insert_line(steps, 5, json.dumps({**good, "round": "one"}))  # line 6: a wrong type
    insert_line(steps, 7, json.dumps({**good, "round": 9, "colour": "red"}))  # line 8: a field no table has
    insert_line(steps, 9, "[1, 2]")  # line 10: not an object
    with open(broken.records_path("traces"), "a") as f:
        f.write('{"trace_id": "torn')  # a torn last line: it waits, it is no problem yet
    with Store.open(workspace) as store:
        assert store.ingest(workspace.runs_dir) == (4 + 12) + (2 + 6)
        problems = store.ingest_problems()
        assert [(p.path, p.line) for p in sorted(problems, key=lambda p: p.line)] == [
            (str(steps.resolve()), n) for n in (3, 6, 8, 10)
        ]
        by_line = {p.line: p.problem for p in problems}
        assert "not a JSON record" in by_line[3] and "Unterminated" in by_line[3]
        assert "'round': expected int, found str" in by_line[6]
        assert "unknown field(s) for trace_steps: colour" in by_line[8]
        assert "expected a JSON object, found list" in by_line[10]
        assert str(problems[0]).startswith(f"{steps.resolve()}:")
        assert store.ingest(workspace.runs_dir) == 0  # nothing read twice, nothing reported twice
        assert len(store.ingest_problems()) == 4
    with open(broken.records_path("traces"), "a") as f:
        f.write('", "nope": 1}\n')  # the torn line completed, as a bad record: now it is named
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        [late] = [p for p in store.ingest_problems() if p.path.endswith("traces.jsonl")]
        assert late.line == 5 and "unknown field(s) for traces: nope" in late.problem


def test_a_value_the_schema_refuses_is_one_quarantined_line(workspace):
    job = make_job(workspace)
    row = {
        "pair_id": "x1",
        "prompt": "p",
        "response_a": "a",
        "response_b": "b",
        "source": "sampled",
        "origin": "o",
        "origin_index": 0,
        "origin_a": "0",
        "origin_b": "1",
        "created_at": 1.0,
    }
    job.append("pairs", [row, {**row, "pair_id": "x2", "source": "elsewhere"}, {**row, "pair_id": "x3"}])
    with Store.open(workspace) as store:
        assert store.ingest(workspace.runs_dir) == 2
        [problem] = store.ingest_problems()
        assert problem.line == 2 and "'source': 'elsewhere' is not one of sampled, sl-cai, import" in problem.problem


def test_a_broken_run_json_quarantines_that_job_only_until_it_is_fixed(workspace):
    healthy = make_job(workspace, "run-ok")
    spool_traces(healthy, 2)
    extra = make_job(workspace, "run-extra")
    spool_traces(extra, 1)
    spec = (extra.path / "run.json").read_text()
    (extra.path / "run.json").write_text(spec + '\n{"again": 1}\n')  # extra data after the object
    kindless = JobFolder.create(workspace.runs_dir, "run-kindless", {"model": "m", "config": {}})
    spool_traces(kindless, 1)
    with Store.open(workspace) as store:
        assert store.ingest(workspace.runs_dir) == 2 + 6
        assert store.runs().run_id.tolist() == ["run-ok"]
        problems = {p.path: p for p in store.ingest_problems()}
        bad_extra = problems[str((extra.path / "run.json").resolve())]
        assert "Extra data" in bad_extra.problem and bad_extra.line == spec.count("\n") + 2
        assert "'kind' is missing" in problems[str((kindless.path / "run.json").resolve())].problem
    (extra.path / "run.json").write_text(spec)
    with Store.open(workspace) as store:
        assert store.ingest(workspace.runs_dir) == 1 + 3
        assert [p.path for p in store.ingest_problems()] == [str((kindless.path / "run.json").resolve())]


def test_listings_leave_out_a_broken_job_and_cai_jobs_names_it(workspace):
    from cai_core.cli import main as cai
    from cai_core.jobs import list_job_folders

    good = JobFolder.create(workspace.runs_dir, "good", {"kind": "generate", "model": "m", "config": {}})
    broken = workspace.runs_dir / "broken"
    broken.mkdir(parents=True)
    (broken / "run.json").write_text('{"kind": "generate", "model": "m"} trailing', encoding="utf-8")
    assert [j.run_id for j in list_job_folders(workspace.runs_dir)] == [good.run_id]
    assert {j.run_id for j in list_job_folders(workspace.runs_dir, unreadable=True)} == {"good", "broken"}
    assert cai(["--data-dir", str(workspace.root), "jobs"]) == 0  # no traceback on the broken one


def test_a_progress_json_without_a_field_quarantines_its_job_and_every_page_still_draws(ws):

    from cai_core.jobs import list_job_folders

    broken = JobFolder.create(ws.runs_dir, "gen-fieldless", {"kind": "generate", "model": "m", "config": {}})
    (broken.path / "progress.json").write_text('{"status": "running", "done": 3}', encoding="utf-8")
    assert broken.run_id not in [j.run_id for j in list_job_folders(ws.runs_dir)]
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        problems = {p.path: p.problem for p in store.ingest_problems()}
        assert "'total' is missing" in problems[str((broken.path / "progress.json").resolve())]
    for page in (None, "pages/3_Generate.py", "pages/9_Data.py"):
        open_page(page)
