"""Inspect AI evaluations through the workbench's own engine: the offline XSTest task against a model spec, the log
Inspect's reader opens, and the headline score in the store."""

from __future__ import annotations

import pytest

from cai_core import jobs
from cai_core.store import Store

from .conftest import require_shared_data


@pytest.mark.processes
def test_xstest_through_the_workbench_model_writes_a_readable_log_and_a_stored_score(workspace, tiny_model_path):
    from inspect_ai.log import read_eval_log

    from cai_core.inspect_eval import InspectConfig

    require_shared_data("xstest", "xstest_prompts.csv")
    config = InspectConfig(task="xstest", model=tiny_model_path, limit=3, max_new_tokens=4, tracker="none")
    job = jobs.run("inspect", config, workspace)
    assert job.progress().status == "done"

    (log_file,) = (job.path / "inspect").glob("*.eval")
    log = read_eval_log(str(log_file))
    assert log.status == "success" and len(log.samples) == 3
    assert log.eval.model == f"cai/{tiny_model_path}"
    accuracy = log.results.scores[0].metrics["accuracy"].value

    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        scores = store.inspect_scores()
    stored = scores[(scores.run_id == job.run_id) & (scores.metric == "accuracy")]
    assert stored.value.tolist() == [accuracy] and stored.task.tolist() == ["xstest"]
    assert stored.log.tolist() == [log.location]


def test_an_unknown_task_is_refused_by_name(workspace):
    from cai_core.inspect_eval import InspectConfig

    with pytest.raises(ValueError, match="task: 'nope' is not one of xstest"):
        jobs.prepare("inspect", InspectConfig(task="nope"), workspace)


def test_without_inspect_the_job_says_how_to_get_it(workspace, monkeypatch):
    from cai_core.inspect_eval import InspectConfig

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match="need inspect_ai, which is not installed"):
        jobs.prepare("inspect", InspectConfig(task="xstest"), workspace)
