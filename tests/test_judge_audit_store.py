"""The judge audit over a real store and a real (tiny) judge: a calibration fitted, stored and applied by the
dashboard and the export; the disagreement-first queue served by the store, with its guarantees; the
per-principle audit with the revision effects of SL-CAI traces."""

from __future__ import annotations

import json
import threading
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from cai_core import cli, jobs
from cai_core.agreement import dashboard
from cai_core.backends.hf import HFBackend
from cai_core.constitution import load_constitution
from cai_core.exports import ExportFilter, preference_rows
from cai_core.feedback import Judge, LabelConfig
from cai_core.jobs import JobFolder
from cai_core.judge_audit import calibrate_run, measure_priors, queue_tightening, score_queue
from cai_core.judge_calibration import CALIBRATION_STAGES, JudgeCalibration, PlattScaling
from cai_core.judge_queue import contest_score, queue_order
from cai_core.records import AILabel, CalibrationPrior, HumanLabel, Pair, RoundJudgment, StoredCalibration, to_row
from cai_core.store import PairQueue, Store
from cai_core.workspace import PROJECT_ROOT

from .browser.seed import logprob_label

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
FIVE_PRINCIPLES = str(PROJECT_ROOT / "constitutions" / "customer_service.yaml")


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return HFBackend(tiny_model_path, batch_size=8)


def pairs(n: int) -> list[Pair]:
    return [
        Pair(f"p{i:03d}", f"question {i}?", f"answer {i} " * (1 + i % 3), f"reply {i}", "import", "hand", i, "a", "b")
        for i in range(n)
    ]


def test_a_calibration_is_fitted_with_the_real_judge_stored_and_applied_by_the_dashboard_and_export(workspace, tiny):
    found = pairs(30)
    with Store.open(workspace) as store:
        store.add_pairs(found)
        # people prefer the longer answer, whichever side it is on
        store.import_human_labels(
            [HumanLabel(p.pair_id, "ann", "a" if i % 3 else "b", False, "") for i, p in enumerate(found)]
        )
    config = LabelConfig(constitution=FIVE_PRINCIPLES, model="tiny", strategy="ensemble")
    job = jobs.run("label", config, workspace, backend=tiny)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        before = dashboard(store, run_id=job.run_id)
        calibration_id, calibration = calibrate_run(store, workspace, job.run_id, backend=tiny)

        # the priors are the judge's P(first) on the content-free pairs, per principle
        constitution = load_constitution(FIVE_PRINCIPLES)
        direct = measure_priors(Judge(tiny, constitution), constitution.enabled_principles)
        assert set(calibration.priors) == set(direct) == {p.id for p in constitution.enabled_principles}
        assert np.array([calibration.priors[p] for p in direct]) == pytest.approx(
            np.array(list(direct.values())), abs=1e-5
        )
        report = calibration.report
        assert report["n_fit"] + report["n_held_out"] == 30 * len(constitution.enabled_principles)
        assert set(report["before"]) == {"agreement", "ece", "swap_consistency"}

        stored = store.calibrations()
        row = stored[stored.calibration_id == calibration_id].iloc[0]
        assert row.run_id == job.run_id and row.slope == pytest.approx(calibration.platt.slope)
        assert np.array([row.priors[p] for p in direct]) == pytest.approx(
            np.array([calibration.priors[p] for p in direct])
        )
        assert row.report == report

        # the dashboard reads the labels through it: its pooled figures are those of the calibrated labels
        after = dashboard(store, run_id=job.run_id, calibration=calibration_id)
        labels = store.con.execute(
            "SELECT pair_id, principle_id, p_order1, p_order2 FROM ai_labels ORDER BY pair_id, principle_id"
        ).df()
        q1, q2 = calibration.apply(labels.p_order1.to_numpy(), labels.p_order2.to_numpy(), list(labels.principle_id))
        consistent = pd.Series((q1 > 0.5) != (q2 > 0.5)).groupby(labels.pair_id).mean()
        assert after.by_principle.position_consistency.mean() == pytest.approx(consistent.mean(), abs=1e-9)
        assert after.overall["ece"] != pytest.approx(before.overall["ece"], abs=1e-6)  # the probabilities moved

        # and the export takes it on request: P(a better) per pair is the mean of the calibrated labels
        exported = preference_rows(store, ExportFilter(run_id=job.run_id, calibration=calibration_id)).set_index(
            "pair_id"
        )
        p_a = pd.Series((q1 + 1 - q2) / 2).groupby(labels.pair_id).mean()
        a_won = exported.chosen.map(lambda c: c[0]["content"]) == [
            next(p for p in found if p.pair_id == i).response_a for i in exported.index
        ]
        expected = np.where(a_won, p_a[exported.index], 1 - p_a[exported.index])
        assert exported.soft_label.to_numpy() == pytest.approx(expected, abs=1e-6)

        with pytest.raises(ValueError, match="no calibration"):
            dashboard(store, calibration="cal-nothing")


def test_calibrating_a_run_without_human_labels_says_so(workspace, tiny):
    with Store.open(workspace) as store:
        store.add_pairs(pairs(4))
    job = jobs.run("label", LabelConfig(constitution=HHH, model="tiny"), workspace, backend=tiny)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        with pytest.raises(ValueError, match="person's a or b label"):
            calibrate_run(store, workspace, job.run_id, backend=tiny)
        with pytest.raises(ValueError, match="no AI labels"):
            calibrate_run(store, workspace, "label-nothing", backend=tiny)


def load_label_run(workspace, run: str, probabilities: list[tuple[float, float]], principle: str = "harm") -> None:
    rows = [
        to_row(logprob_label(run, f"p{i:03d}", principle, "j", "v1", p1, p2))
        for i, (p1, p2) in enumerate(probabilities)
    ]
    JobFolder.create(workspace.runs_dir, run, {"kind": "label", "model": "j"}).append("ai_labels", rows)


def test_the_disagreement_first_queue_serves_in_score_order_and_records_what_it_served(workspace):
    rng = np.random.default_rng(0)
    probabilities = [(float(a), float(b)) for a, b in rng.uniform(0.02, 0.98, (60, 2))]
    load_label_run(workspace, "run-q", probabilities)
    with Store.open(workspace) as store:
        store.add_pairs(pairs(60))
        store.ingest(workspace.runs_dir)
        assert score_queue(store, "run-q") == 60
        assert score_queue(store, "run-q") == 0  # frozen: scored once
        p1, p2 = np.array(probabilities).T
        ids = [f"p{i:03d}" for i in range(60)]
        expected = queue_order(ids, contest_score(p1, p2, np.zeros(60), np.zeros(60)), seed="run-q")
        served = []
        for _ in range(10):
            item = store.next_annotation("ann", PairQueue(overlap=1, contested_run="run-q"))
            store.save_human_label(item.label("ann", "a"))
            served.append(item.pair_id)
        assert served == expected[:10]
        # the default mode is unchanged: pairs nearest their overlap first, in the origin's order
        assert store.next_annotation("bo", PairQueue(overlap=2)).pair_id == min(served)
        assert list(store.queue_served_labels("run-q").pair_id) == served

        table = queue_tightening(store, "run-q")
        assert list(table.labelled_pairs) == list(range(1, 11))
        p_a = {i: (a + 1 - b) / 2 for i, (a, b) in zip(ids, probabilities, strict=True)}
        stored = {lb.pair_id: lb.choice for lb in store.human_labels(annotator="ann")}  # "a" as shown, sides hidden
        agrees = [(p_a[p] > 0.5) == (stored[p] == "a") for p in served]
        assert table.plain_mean.iloc[-1] == pytest.approx(np.mean(agrees))
        assert (table.low <= table.estimate).all() and (table.estimate <= table.high).all()


def test_contested_queue_never_hands_one_pair_to_two_annotators(workspace):
    load_label_run(workspace, "run-c", [(0.3 + 0.01 * i, 0.6) for i in range(40)])
    with Store.open(workspace) as store:
        store.add_pairs(pairs(40))
        store.ingest(workspace.runs_dir)
        score_queue(store, "run-c")
    got, errors = [], []

    def annotator(name: str) -> None:
        try:
            for _ in range(8):
                with Store.open(workspace) as store:
                    item = store.next_annotation(name, PairQueue(overlap=1, contested_run="run-c"))
                    got.append(item.pair_id)
                    store.save_human_label(item.label(name, "b"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(f"{name}: {exc}")

    threads = [threading.Thread(target=annotator, args=(f"ann-{k}",)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(got) == 40 and max(Counter(got).values()) == 1  # overlap 1: every pair to one annotator only


def test_the_principle_audit_reads_agreement_position_flips_and_revision_effects(workspace):
    # "harm": consistent and right; "tone": picks the first shown in both orders, and people disagree
    load_label_run(workspace, "run-h", [(0.9, 0.1)] * 10, "harm")
    rows = [
        to_row(
            AILabel(
                "run-t", f"p{i + 10:03d}", "tone", "j", "v1", "sample", "logprob", False, 0, 0.9, 0.85, 0.525, False
            )
        )
        for i in range(10)
    ]
    JobFolder.create(workspace.runs_dir, "run-t", {"kind": "label", "model": "j"}).append("ai_labels", rows)
    judged = [
        RoundJudgment("rounds", f"{principle}-{i}", 1, 0, principle, principle, 0.5, 0.5, p, False, "j", "v1")
        for i in range(6)
        for principle, p in (("harm", 0.8), ("tone", 0.2))
    ]
    JobFolder.create(workspace.runs_dir, "rounds", {"kind": "rounds", "model": "j"}).append(
        "round_judgments", [to_row(r) for r in judged]
    )
    with Store.open(workspace) as store:
        store.add_pairs(pairs(20))
        store.import_human_labels(
            [HumanLabel(f"p{i:03d}", "ann", "a" if i < 10 else "b", False, "") for i in range(20)]
        )
        store.ingest(workspace.runs_dir)
        audit = dashboard(store).principle_audit.set_index("principle_id")
    assert audit.loc["harm", "agreement"] == 1.0 and audit.loc["tone", "agreement"] == 0.0
    assert audit.loc["harm", "flip_rate"] == 0.0 and audit.loc["tone", "flip_rate"] == 1.0
    assert audit.loc["tone", "position_bias"] == 0.5
    assert audit.loc["harm", "revision_p_better"] == pytest.approx(0.8)
    assert audit.loc["tone", "revision_p_better"] == pytest.approx(0.2) and audit.loc["tone", "revisions_judged"] == 6
    assert audit.loc["harm", "finding"] == "fine"
    for finding in ("flips under swap", "favours a position", "people read it the other way", "made answers worse"):
        assert finding in audit.loc["tone", "finding"]


def test_a_stored_calibration_reads_the_same_in_sql_as_in_python_on_every_door(workspace, capsys):
    rng = np.random.default_rng(5)
    probabilities = [(float(a), float(b)) for a, b in rng.uniform(0.05, 0.95, (30, 2))]
    load_label_run(workspace, "run-s", probabilities[:15], "harm")
    rows = [
        to_row(
            AILabel(
                "run-s", f"p{i:03d}", "tone", "j", "v1", "sample", "logprob", False, 0, a, b, (a + 1 - b) / 2, False
            )
        )
        for i, (a, b) in enumerate(probabilities)
        if i >= 15
    ]
    JobFolder(workspace.runs_dir / "run-s").append("ai_labels", rows)
    calibration = JudgeCalibration({"harm": (0.8, 0.7)}, PlattScaling(0.6, -0.2), {})  # "tone": no prior measured
    report = {s: {"agreement": 0.5, "ece": 0.1, "swap_consistency": 0.2} for s in CALIBRATION_STAGES}
    # spooled as a calibration job spools them
    fitted = JobFolder.create(workspace.runs_dir, "cal-hand", {"kind": "calibrate", "model": "j", "config": {}})
    fitted.append("calibration_priors", [to_row(CalibrationPrior("cal-hand", "harm", 0.8, 0.7))])
    stored = StoredCalibration(
        "cal-hand", "run-s", "j", "v1", 0.6, -0.2, json.dumps(report | {"n_fit": 20, "n_held_out": 10})
    )
    fitted.append("judge_calibrations", [to_row(stored)])
    with Store.open(workspace) as store:
        store.add_pairs(pairs(30))
        store.import_human_labels([HumanLabel(f"p{i:03d}", "ann", "ab"[i % 2], False, "") for i in range(30)])
        store.ingest(workspace.runs_dir)
        exported = store.pair_preferences("run-s", calibration_id="cal-hand").set_index("pair_id")
    p1, p2 = np.array(probabilities).T
    q1, q2 = calibration.apply(p1, p2, ["harm"] * 15 + ["tone"] * 15)
    expected = (q1 + 1 - q2) / 2
    assert exported.loc[[f"p{i:03d}" for i in range(30)], "p"].to_numpy() == pytest.approx(expected, abs=1e-9)

    assert cli.main(["--data-dir", str(workspace.root), "calibrate", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "cal-hand  judge j" in listed and "contextual" in listed and "10 held-out" in listed
    assert (
        cli.main(["--data-dir", str(workspace.root), "agreement", "--calibration", "cal-hand", "--by", "principle"])
        == 0
    )
    shown = capsys.readouterr().out
    assert "through calibration cal-hand" in shown and "per-principle audit" in shown and "tone" in shown


def kappa_signal(board):
    return next(row for row in board.verdict.table() if row["signal"] == "Cohen's kappa")


def test_kappa_of_a_judge_that_always_says_a_has_no_interval_and_none_leaves_minus_one_to_one(workspace):
    # the judge picks a on all five pairs, people a on four: kappa is 0 whatever it agrees, as the issue saw it
    load_label_run(workspace, "run-one-sided", [(0.9, 0.1)] * 5)
    with Store.open(workspace) as store:
        store.add_pairs(pairs(5))
        store.import_human_labels([HumanLabel(f"p{i:03d}", "ann", "a" if i else "b", False, "") for i in range(5)])
        store.ingest(workspace.runs_dir)
        board = dashboard(store, run_id="run-one-sided")
    assert board.overall["kappa"] == 0
    estimate = kappa_signal(board)["estimate"]
    assert "undefined" in estimate and "1.75" not in estimate, estimate

    # a judge that uses both verdicts on few pairs: the interval is Cohen's, held inside [-1, 1]
    load_label_run(workspace, "run-few", [(0.9, 0.1), (0.1, 0.9), (0.9, 0.1), (0.9, 0.1), (0.1, 0.9)])
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        board = dashboard(store, run_id="run-few")
    signal = next(s for s in board.verdict.signals if s.name == "Cohen's kappa")
    assert -1 <= signal.estimate.low <= signal.estimate.value <= signal.estimate.high <= 1, signal.estimate


def test_a_calibration_job_reports_its_progress_stops_on_cancel_and_resumes_where_it_stopped(workspace, tiny):
    from cai_core.judge_audit import CalibrateConfig

    found = pairs(12)
    with Store.open(workspace) as store:
        store.add_pairs(found)
        store.import_human_labels([HumanLabel(p.pair_id, "ann", "ab"[i % 2], False, "") for i, p in enumerate(found)])
    labels = jobs.run(
        "label", LabelConfig(constitution=FIVE_PRINCIPLES, model="tiny", strategy="ensemble"), workspace, backend=tiny
    )
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        job = jobs.prepare("calibrate", CalibrateConfig(label_run=labels.run_id), workspace, store=store)
    seen = []

    def cancel_after_the_first_principle(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 1:
            job.request_cancel()

    config = CalibrateConfig(**job.spec["config"])
    jobs.run("calibrate", config, workspace, backend=tiny, on_progress=cancel_after_the_first_principle)
    stopped = job.progress()
    principles = len(load_constitution(FIVE_PRINCIPLES).enabled_principles)
    assert (stopped.status, stopped.done, stopped.total, stopped.unit) == ("cancelled", 1, principles + 1, "step")
    assert stopped.rate and stopped.elapsed is not None  # the card's rate and elapsed time
    assert len(job.read("calibration_priors")) == 1 and not job.records_path("judge_calibrations").exists()

    jobs.run("calibrate", config, workspace, backend=tiny)  # resumed: the other principles, then the fit
    assert job.progress().status == "done" and len(job.read("calibration_priors")) == principles
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        assert list(store.calibrations().calibration_id) == [job.run_id]


def test_calibrating_a_run_whose_folder_keeps_no_constitution_says_so(workspace):
    load_label_run(workspace, "run-bare", [(0.8, 0.3)] * 4)
    with Store.open(workspace) as store:
        store.add_pairs(pairs(4))
        store.import_human_labels([HumanLabel(f"p{i:03d}", "ann", "a", False, "") for i in range(4)])
        store.ingest(workspace.runs_dir)
        with pytest.raises(ValueError, match="'run-bare': its run.json holds no constitution"):
            calibrate_run(store, workspace, "run-bare")
