"""Calibrating the AI judge's probabilities, measured on a held-out split of human-labelled pairs.

Contextual calibration (Zhao et al. 2021) divides out the judge's prior for the first-shown option, measured
per principle and order on content-free pairs; Platt scaling (a logistic fit on logit P) is then fitted on
human-labelled pairs; both are reported before and after on a held-out split, and stored together as one
calibration of a label run's judge and constitution version. Probabilities follow `feedback.py` (see
`judge_audit`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .stats import ece


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)


def _logit(p: np.ndarray) -> np.ndarray:
    p = _clip(p)
    return np.log(p / (1 - p))


def contextual_correction(p_first: np.ndarray, prior_first: np.ndarray) -> np.ndarray:
    """Zhao et al. 2021 for two options: divide P(first shown) and P(second shown) by the judge's probabilities
    for them on a content-free pair (prior_first, 1 - prior_first) and renormalise. In logits this is a shift:
    logit(p) - logit(prior)."""
    shifted = _logit(p_first) - _logit(prior_first)
    return 1.0 / (1.0 + np.exp(-shifted))


@dataclass(frozen=True)
class PlattScaling:
    """P' = sigmoid(slope * logit(P) + bias), fitted by maximum likelihood on human a/b labels."""

    slope: float
    bias: float

    def apply(self, p: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * _logit(p) + self.bias)))

    @classmethod
    def fit(cls, p_a: np.ndarray, people_chose_a: np.ndarray) -> PlattScaling:
        from scipy.optimize import minimize

        x, y = _logit(p_a), np.asarray(people_chose_a, dtype=float)
        if len(x) < 2 or y.min() == y.max():
            raise ValueError("Platt scaling needs human labels of both kinds (a and b) on at least two pairs")

        def loss(theta: np.ndarray) -> float:
            z = theta[0] * x + theta[1]
            return float(np.mean(np.logaddexp(0.0, z) - y * z)) + 1e-4 * float(theta @ theta)  # a tiny ridge

        result = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B")
        return cls(float(result.x[0]), float(result.x[1]))


def held_out(pair_ids: list[str], fraction: float = 0.3, salt: str = "calibration") -> np.ndarray:
    """True for the pairs kept out of fitting: a hash of the pair id, so the split is stable as labels arrive."""
    cut = int(fraction * 2**32)
    return np.array([int(hashlib.sha256(f"{salt}:{p}".encode()).hexdigest()[:8], 16) < cut for p in pair_ids])


def judge_figures(p1: np.ndarray, p2: np.ndarray, people_chose_a: np.ndarray) -> dict[str, float | None]:
    """Agreement, ECE and swap consistency of per-order probabilities against human a/b labels."""
    p1, p2, y = np.asarray(p1, float), np.asarray(p2, float), np.asarray(people_chose_a, float)
    if not len(p1):
        return {"agreement": None, "ece": None, "swap_consistency": None}
    p_a = (p1 + 1 - p2) / 2
    decided = p_a != 0.5
    return {
        "agreement": float(((p_a[decided] > 0.5) == (y[decided] == 1)).mean()) if decided.any() else None,
        "ece": ece(p_a, y),
        "swap_consistency": float(((p1 > 0.5) != (p2 > 0.5)).mean()),
    }


CALIBRATION_STAGES = ("before", "contextual", "after")  # raw, priors divided out, then Platt on top


@dataclass(frozen=True)
class JudgeCalibration:
    """The judge's prior for the first-shown option per principle (order 1, order 2), divided out first, then a
    Platt fit; `report` holds each stage's figures (`judge_figures`) on the held-out pairs, and the split's sizes."""

    priors: dict[str, tuple[float, float]]
    platt: PlattScaling
    report: dict

    def apply(self, p1: np.ndarray, p2: np.ndarray, principle_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-order probabilities as this calibration reads them (a principle without a prior is not shifted)."""
        prior1, prior2 = (np.array([self.priors.get(p, (0.5, 0.5))[k] for p in principle_ids]) for k in (0, 1))
        return (
            self.platt.apply(contextual_correction(p1, prior1)),
            self.platt.apply(contextual_correction(p2, prior2)),
        )


def calibrate(
    pair_ids: list[str],
    principle_ids: list[str],
    p1: np.ndarray,
    p2: np.ndarray,
    people_chose_a: np.ndarray,
    priors: dict[str, tuple[float, float]],
) -> JudgeCalibration:
    """Divide out the priors (measured on content-free pairs, so fitted without human labels), fit Platt on the
    pairs `held_out` leaves in, and report every stage on the held-out ones. Platt is fitted on each order's
    P(first shown), so that what is left of a first-position bias is corrected in each order."""
    p1, p2, y = np.asarray(p1, float), np.asarray(p2, float), np.asarray(people_chose_a, float)
    test = held_out(pair_ids)
    if not test.any() or test.all():
        raise ValueError(f"{len(set(pair_ids))} human-labelled pair(s) are too few to keep some out for the report")
    unfitted = JudgeCalibration(priors, PlattScaling(1.0, 0.0), {})
    c1, c2 = unfitted.apply(p1, p2, principle_ids)
    fit = ~test
    # order 1 shows a first, so P(first) should predict "a"; order 2 shows b first, so it predicts "b"
    platt = PlattScaling.fit(np.concatenate([c1[fit], c2[fit]]), np.concatenate([y[fit], 1 - y[fit]]))
    stages = {"before": (p1, p2), "contextual": (c1, c2), "after": (platt.apply(c1), platt.apply(c2))}
    report = {stage: judge_figures(q1[test], q2[test], y[test]) for stage, (q1, q2) in stages.items()}
    report |= {"n_fit": int(fit.sum()), "n_held_out": int(test.sum())}
    return JudgeCalibration(priors, platt, report)
