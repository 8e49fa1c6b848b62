"""The judge audit's arithmetic against simulated judges whose biases are known."""

from __future__ import annotations

import numpy as np
import pytest

from cai_core.judge_calibration import PlattScaling, calibrate
from cai_core.judge_queue import contest_score, queue_order, reweighted_agreement
from cai_core.judge_verdict import JudgeFigures, judge_verdict
from cai_core.stats import wilson


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _logit(p):
    return np.log(p / (1 - p))


def test_wilson_interval_contains_the_proportion_and_stays_in_range():
    e = wilson(0, 10)
    assert e.value == 0 and e.low == 0 and 0 < e.high < 0.35
    e = wilson(47, 50)
    assert e.low < 0.94 < e.high <= 1
    assert wilson(0, 0) is None


def test_the_default_judge_position_bias_is_unreliable_with_reasons():
    # the default 135M judge on hh-rlhf (stop 7's figures): first position 94%, agreement 0.52, kappa 0.04
    figures = JudgeFigures(
        both_orders=100,
        consistent=12,
        first_picks=188,
        agreeing=52,
        compared=100,
        kappa=0.043,
        ece=0.089,
        ece_labels=100,
    )
    verdict = judge_verdict(figures)
    assert verdict.name == "unreliable"
    poor = {s.name for s in verdict.signals if s.grade == "poor"}
    assert {"swap consistency", "first-position bias", "agreement with people", "Cohen's kappa"} <= poor
    assert any("bigger judge" in advice for advice in verdict.advice)
    assert any("swap" in reason for reason in verdict.reasons)


def test_a_consistent_accurate_judge_is_trustworthy_and_calibration_alone_only_weakens_it():
    good = JudgeFigures(400, 360, 410, 330, 400, 0.62, 0.03, 400)
    verdict = judge_verdict(good)
    assert verdict.name == "trustworthy" and not verdict.advice
    miscalibrated = judge_verdict(JudgeFigures(400, 360, 410, 330, 400, 0.62, 0.30, 400))
    assert miscalibrated.name == "weak"
    assert any("Platt" in a for a in miscalibrated.advice)


def test_without_human_labels_a_judge_is_at_best_weak():
    verdict = judge_verdict(JudgeFigures(400, 380, 400, 0, 0, None, None, 0))
    assert verdict.name == "weak"
    assert {s.name for s in verdict.signals if s.grade == "unknown"} == {
        "agreement with people",
        "Cohen's kappa",
        "ECE",
    }
    assert judge_verdict(JudgeFigures(0, 0, 0, 0, 0, None, None, 0)).name == "not enough data"


def _biased_judge(n: int, bias: float, seed: int = 0):
    """People prefer a with probability q; the judge sees q but adds `bias` to the logit of whatever it is
    shown first, in both orders."""
    rng = np.random.default_rng(seed)
    q = np.clip(rng.beta(2, 2, n), 0.02, 0.98)
    people_chose_a = (rng.random(n) < q).astype(float)
    p1 = _sigmoid(_logit(q) + bias)  # a shown first
    p2 = _sigmoid(_logit(1 - q) + bias)  # b shown first
    return [f"pair-{i}" for i in range(n)], p1, p2, people_chose_a


def test_contextual_calibration_recovers_the_bias_and_improves_ece_and_swap_consistency():
    bias = 1.5
    ids, p1, p2, y = _biased_judge(3000, bias)
    # content-free pairs: nothing to prefer, so the judge's P(first) there is its prior
    prior = _sigmoid(_logit(np.full(20, 0.5)) + bias).mean()
    assert prior == pytest.approx(_sigmoid(bias))
    calibration = calibrate(ids, ["harm"] * 3000, p1, p2, y, {"harm": (prior, prior)})
    report = calibration.report
    assert report["n_held_out"] > 500
    assert report["contextual"]["ece"] < report["before"]["ece"] / 2
    assert report["contextual"]["swap_consistency"] > report["before"]["swap_consistency"] + 0.2
    # with the bias divided out, nothing is left for Platt to undo
    assert calibration.platt.bias == pytest.approx(0.0, abs=0.3)
    assert calibration.platt.slope == pytest.approx(1.0, abs=0.25)


def test_platt_scaling_fitted_on_human_labels_undoes_the_bias_on_held_out_pairs():
    bias = 1.5
    ids, p1, p2, y = _biased_judge(3000, bias, seed=1)
    calibration = calibrate(ids, ["harm"] * 3000, p1, p2, y, {})  # no prior measured: Platt alone
    assert calibration.platt.bias == pytest.approx(-bias, abs=0.35)
    assert calibration.platt.slope == pytest.approx(1.0, abs=0.25)
    report = calibration.report
    assert report["contextual"] == report["before"]
    assert report["after"]["ece"] < report["before"]["ece"]
    assert report["after"]["swap_consistency"] > report["before"]["swap_consistency"]


def test_priors_are_per_principle():
    # two principles with opposite position biases: one prior each divides out each one's bias
    ids, p1, p2, y = _biased_judge(2000, 1.0, seed=2)
    _, q1, q2, _ = _biased_judge(2000, -1.0, seed=2)
    principles = ["first"] * 1000 + ["second"] * 1000
    p1, p2 = np.concatenate([p1[:1000], q1[1000:]]), np.concatenate([p2[:1000], q2[1000:]])
    priors = {"first": (_sigmoid(1.0), _sigmoid(1.0)), "second": (_sigmoid(-1.0), _sigmoid(-1.0))}
    report = calibrate(ids, principles, p1, p2, y, priors).report
    assert report["contextual"]["swap_consistency"] > report["before"]["swap_consistency"] + 0.15


def test_platt_needs_both_kinds_of_label():
    with pytest.raises(ValueError, match="both kinds"):
        PlattScaling.fit(np.array([0.6, 0.7, 0.8]), np.array([1, 1, 1]))


def test_queue_serves_contested_pairs_first():
    # hand-made: a flip under swap, a near-tie, annotators split, principles split, and two confident pairs
    ids = ["flip", "near-tie", "people-split", "principles-split", "sure-a", "sure-b"]
    p1 = np.array([0.8, 0.52, 0.9, 0.9, 0.95, 0.05])
    p2 = np.array([0.7, 0.49, 0.1, 0.1, 0.05, 0.95])
    spread = np.array([0.0, 0.0, 0.0, 0.9, 0.0, 0.0])
    split = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    scores = contest_score(p1, p2, spread, split)
    assert scores[:4].min() > 0.85 and scores[4:].max() < 0.15
    # the order is random within a weight class, but a 20x heavier pair comes first in most draws
    firsts = [queue_order(ids, scores, seed=f"s{k}")[:4] for k in range(200)]
    share_contested_first = np.mean([set(f) == set(ids[:4]) for f in firsts])
    assert share_contested_first > 0.7
    assert queue_order(ids, scores) == queue_order(ids, scores)  # stable: the same pairs in the same order


def test_reweighted_agreement_is_unbiased_where_the_plain_mean_is_not():
    rng = np.random.default_rng(3)
    n_pool, n_labelled = 2000, 150
    ids = [f"p{i}" for i in range(n_pool)]
    scores = rng.beta(0.6, 1.2, n_pool)
    agrees = (rng.random(n_pool) < 0.9 - 0.6 * scores).astype(float)  # contested pairs are where the judge errs
    truth = agrees.mean()
    index = {p: i for i, p in enumerate(ids)}
    reweighted, plain, covered = [], [], 0
    for k in range(300):
        served = [index[p] for p in queue_order(ids, scores, seed=f"run{k}")[:n_labelled]]
        est = reweighted_agreement(agrees[served], np.array(served), scores)
        reweighted.append(est.value)
        plain.append(agrees[served].mean())
        covered += est.low <= truth <= est.high
    assert abs(np.mean(reweighted) - truth) < 0.015
    assert np.mean(plain) < truth - 0.1  # the queue over-samples hard pairs, so the plain mean is biased low
    assert covered / 300 > 0.85
