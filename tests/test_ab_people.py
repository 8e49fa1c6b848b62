"""The constitution A/B's verdict audited by people: its A vs B pairs served first by the Annotate page's
disagreement-first queue set to the A/B, and people's labels read back against its judge (kappa against sklearn's)."""

from __future__ import annotations

import pytest
from sklearn.metrics import cohen_kappa_score

from cai_core import jobs
from cai_core.ab import ABConfig, ABError, ABWork
from cai_core.ab_people import people_vs_judge, send_to_people
from cai_core.cli import main
from cai_core.constitution import load_constitution, save_constitution
from cai_core.grader_audit import MIN_ANSWERS
from cai_core.job_folder import JobFolder
from cai_core.records import Pair
from cai_core.store import PairQueue, Store
from cai_core.workspace import PROJECT_ROOT, Workspace

from .app_pages import open_page
from .test_ab import spool_generation

RED_TEAM = PROJECT_ROOT / "constitutions" / "red_team.yaml"
PROMPTS = 24  # 12 of each set: more labels than MIN_ANSWERS
FLIP = {"a": "b", "b": "a"}


def judged_ab(workspace: Workspace, a: str, b: str, *, judged: bool = True) -> tuple[str, dict[str, float]]:
    """An A/B of constitutions `a` and `b` whose stages have run (spooled by hand): the judge prefers A's revision
    on two prompts of three. Returns its id and the judge's P(A better) per A vs B pair."""
    job = jobs.prepare("ab", ABConfig(constitution_a=a, constitution_b=b, limit=PROMPTS // 2), workspace)
    spool_generation(job, "a", {})
    spool_generation(job, "b", {})
    judge = JobFolder.create(workspace.runs_dir, f"{job.run_id}-judge", {"kind": "ab-judge", "config": {}})
    pairs = ABWork(job, ABConfig(**job.spec["config"]), workspace).pairs()
    judge.write_input("ab_pairs", pairs)
    headline = [row for row in pairs if row["comparison"] == "A vs B"]
    p_a = {row["pair"]["pair_id"]: 0.3 if n % 3 == 0 else 0.8 for n, row in enumerate(headline)}
    if judged:
        judge.append(
            "ab_judgments",
            [
                {"pair_id": pair_id, "prompt_key": pair_id.split(":")[1], "comparison": "A vs B"}
                | {"principle_id": "neutral", "p_order1": p, "p_order2": 1 - p, "p_a": p, "failed": False}
                for pair_id, p in p_a.items()
            ],
        )
    return job.run_id, p_a


@pytest.fixture
def two_files(tmp_path) -> tuple[str, str]:
    first = load_constitution(RED_TEAM)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    save_constitution(first, a)
    save_constitution(first.model_copy(update={"principles": first.principles[:2]}), b)
    return str(a), str(b)


def test_the_pairs_go_first_in_the_ab_queue_and_people_are_read_against_its_judge(workspace, two_files):
    run_id, p_a = judged_ab(workspace, *two_files)
    with Store.open(workspace) as store:
        store.add_pairs([Pair("elsewhere", "p", "x", "y", "import", "file.jsonl", 0, "chosen", "rejected")])
        assert "have not been sent to people" in str(people_vs_judge(workspace, store, run_id))
        assert send_to_people(workspace, store, run_id) == PROMPTS
        assert send_to_people(workspace, store, run_id) == 0  # sent once
        served = store.claim_annotations("ann", PROMPTS + 1, PairQueue(overlap=1, contested_run=run_id))
        assert {item.pair_id for item in served[:PROMPTS]} == set(p_a) and served[-1].pair_id == "elsewhere"
        # people side with the judge but on the first six pairs they are served
        people, judge = [], []
        for n, item in enumerate(served[:PROMPTS]):
            verdict = "a" if p_a[item.pair_id] > 0.5 else "b"
            choice = verdict if n >= 6 else FLIP[verdict]
            people.append(choice)
            judge.append(verdict)
            store.save_human_label(item.label("ann", FLIP[choice] if item.shown_swapped else choice))
        store.save_human_label(served[-1].label("ann", "a"))  # a label elsewhere is not the A/B's
        result = people_vs_judge(workspace, store, run_id)
    assert result.audited and result.labels == PROMPTS >= MIN_ANSWERS and result.sent == PROMPTS
    # every pair labelled once: the weighting by the judge's mix changes nothing, the kappa is the plain one
    assert result.kappa.value == pytest.approx(cohen_kappa_score(people, judge)) and result.kappa.value < 1
    assert result.kappa.low < result.kappa.value < result.kappa.high
    assert result.judge_win_rate.value == pytest.approx(2 / 3)
    assert result.people_win_rate.value == pytest.approx(people.count("a") / PROMPTS)
    assert str(result).startswith("A/B judge: agreement with people κ")
    # the queue served every pair sent: each was certain to be served, and the reweighted agreement is the plain one
    assert result.queue_agreement.value == pytest.approx(18 / PROMPTS) and "reweighted for the queue's order" in str(
        result
    )


def test_an_ab_not_judged_yet_sends_nothing_and_says_why(workspace, two_files):
    run_id, _ = judged_ab(workspace, *two_files, judged=False)
    with Store.open(workspace) as store:
        with pytest.raises(ABError, match=f"A/B {run_id}: no A vs B pair judged yet"):
            send_to_people(workspace, store, run_id)
        with pytest.raises(ABError, match="no A/B run 'nope'"):
            send_to_people(workspace, store, "nope")
        assert store.count_pairs() == 0


def test_the_cli_sends_the_pairs_and_prints_people_against_the_judge(workspace, two_files, capsys):
    run_id, _ = judged_ab(workspace, *two_files)
    assert main(["--data-dir", str(workspace.root), "constitution", "ab-people", run_id, "--send"]) == 0
    out = capsys.readouterr().out
    assert f"sent {PROMPTS} new A vs B pairs" in out and f"A/B judge: unaudited (0 of the {MIN_ANSWERS}" in out


# --- the pages ------------------------------------------------------------------------------------------


@pytest.fixture
def page_ws(tmp_path, monkeypatch) -> Workspace:
    """The app's data folder and a constitutions folder of its own, holding the red-team file saved in two versions,
    and an A/B of those versions, judged."""
    workspace = Workspace(tmp_path / "data")
    constitutions = tmp_path / "constitutions"
    constitutions.mkdir()
    path = constitutions / "red_team.yaml"
    shipped = load_constitution(RED_TEAM)
    edited = shipped.model_copy(update={"principles": shipped.principles[:2]})
    with Store.open(workspace) as store:
        for c, note in ((shipped, "as shipped"), (edited, "two principles")):
            save_constitution(c, path)
            store.record_constitution(c, path, note)
    judged_ab(workspace, shipped.version, edited.version)
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(constitutions))
    monkeypatch.delenv("CAI_DB", raising=False)
    return workspace


def test_the_constitution_page_sends_the_ab_pairs_and_the_annotate_queue_serves_them(page_ws):
    at = open_page("pages/1_Constitution.py")
    at.selectbox(key="con_file").set_value("red_team.yaml").run()
    assert not at.exception, at.exception
    assert any("have not been sent to people" in text.value for text in at.text)
    at.button(key="ab_people_send").click().run()
    assert not at.exception, at.exception
    assert any(f"Sent {PROMPTS} new A vs B pairs" in s.value for s in at.success)
    assert any(f"A/B judge: unaudited (0 of the {MIN_ANSWERS}" in text.value for text in at.text)
    with Store.open(page_ws) as store:
        [run_id] = store.queue_runs()
        ab_pairs = set(store.queue_scores(run_id)["pair_id"])
        store.add_pairs([Pair("elsewhere", "p", "x", "y", "import", "file.jsonl", 0, "chosen", "rejected")])

    at = open_page("pages/5_Annotate.py")
    at.text_input(key="annotator").input("ann").run()
    at.radio(key="queue_mode").set_value("contested").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="queue_run").options == [run_id]
    with Store.open(page_ws) as store:
        claimed = list(
            store.con.execute("SELECT pair_id FROM annotation_claims WHERE annotator = 'ann' ORDER BY claimed_at").df()[
                "pair_id"
            ]
        )
    # the pair on screen when the order changed stays; the look-ahead drawn after it is the A/B's pairs
    assert len(claimed) > 1 and set(claimed[1:]) <= ab_pairs
