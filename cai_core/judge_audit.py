"""Is the AI judge an instrument worth trusting? A verdict, calibration, and where a person's label teaches most.

The agreement dashboard measures the judge; this module judges the measurements. Everything here is arithmetic
on arrays the store returns (one row per AI-labelled pair), so the page, the CLI and the tests share it.

Probabilities follow `feedback.py`: in order 1 response a is shown first and `p1` = P("A"); in order 2 response b
is shown first and `p2` = P("A"), the first-shown option again; the pair's label is p_a = (p1 + 1 - p2) / 2.

Three tools:
- `judge_verdict`: trustworthy, weak or unreliable, from swap consistency, first-position rate, agreement with
  people, Cohen's kappa and ECE, each with a 95% interval, the threshold it was held to and where that comes from.
- Calibration: contextual calibration (Zhao et al. 2021) divides out the judge's prior for the first-shown
  option, measured per principle and order on content-free pairs; Platt scaling (a logistic fit on logit P)
  is fitted on human-labelled pairs and reported on a held-out split.
- Disagreement-first annotation: pairs ordered by how contested their label is, drawn by sequential Poisson
  sampling so that the agreement measured on any prefix of the queue can be reweighted into an unbiased
  estimate (Hajek weights 1/pi), although the queue deliberately over-samples hard pairs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .evaluation import wilson_interval

Grade = Literal["good", "weak", "poor", "unknown"]
VerdictName = Literal["trustworthy", "weak", "unreliable", "not enough data"]
Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


def wilson(successes: float, n: int) -> Estimate | None:
    """A proportion with its Wilson score interval (`evaluation.wilson_interval`), which stays inside [0, 1]."""
    if n <= 0:
        return None
    low, high = wilson_interval(successes, n)
    return Estimate(successes / n, max(0.0, low), min(1.0, high), n)


# --- the verdict ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """`good` and `weak` bounds on a figure (higher is better unless `lower_is_better`), and their source."""

    good: float
    weak: float
    source: str
    lower_is_better: bool = False

    def grade(self, value: float) -> Grade:
        better = (lambda a, b: a <= b) if self.lower_is_better else (lambda a, b: a >= b)
        return "good" if better(value, self.good) else "weak" if better(value, self.weak) else "poor"


THRESHOLDS: dict[str, Threshold] = {
    "swap consistency": Threshold(
        0.80,
        0.60,
        "Lee et al. 2023 (RLAIF): the PaLM 2 L labeller kept the same position after a swap 18% of the time "
        "(consistency 0.82), PaLM 2 XS 56% (0.44)",
    ),
    "first-position bias": Threshold(
        0.10,
        0.20,
        "distance of the first-position rate from 0.5; Zheng et al. 2023 (MT-Bench) found strong judges "
        "within about 0.1 of unbiased and weak ones far beyond 0.2",
        lower_is_better=True,
    ),
    "agreement with people": Threshold(
        0.65,
        0.55,
        "lower end of the 95% interval; Bai et al. 2022 report 63% agreement between researchers and crowd "
        "workers on the hh-rlhf data, Zheng et al. 2023 66% for GPT-4 against people; 0.5 is chance",
    ),
    "Cohen's kappa": Threshold(
        0.40,
        0.20,
        "Landis & Koch 1977: 0.21-0.40 fair, 0.41-0.60 moderate agreement beyond chance",
    ),
    "ECE": Threshold(
        0.05,
        0.15,
        "expected calibration error over 10 bins (Guo et al. 2017); calibration can be repaired, so a poorly "
        "calibrated but accurate judge is weak, not unreliable",
        lower_is_better=True,
    ),
}

ADVICE = {
    "swap consistency": "Its choice depends on which answer is shown first: use a bigger judge, or keep both orders "
    "and ensemble principles so that position errors average out.",
    "first-position bias": "It favours one position: apply contextual calibration, which divides out its prior for "
    "the first-shown answer.",
    "agreement with people": "It does not agree with people beyond chance: use a bigger judge (an `openai:` endpoint "
    "or a local folder), try chain-of-thought, or rewrite the principles people and the judge read differently.",
    "Cohen's kappa": "Its agreement is mostly what chance gives: label more pairs by hand to see where it goes wrong "
    "(disagreement-first annotation serves those first).",
    "ECE": "Its probabilities are over- or under-confident: fit Platt scaling on human-labelled pairs before using "
    "soft labels for a reward model.",
}


@dataclass(frozen=True)
class JudgeFigures:
    """The counts a verdict reads, over one selection of AI labels (e.g. one run)."""

    both_orders: int  # pairs judged in both orders
    consistent: int  # of those, pairs whose choice survived the swap
    first_picks: int  # picks of the first-shown option, over 2 * both_orders orders
    agreeing: int  # AI verdicts (no ties) that match a person's a/b label
    compared: int  # AI verdict and person's label both a or b
    kappa: float | None
    ece: float | None
    ece_labels: int


@dataclass(frozen=True)
class Signal:
    name: str
    estimate: Estimate | None
    grade: Grade
    explanation: str


@dataclass(frozen=True)
class Verdict:
    name: VerdictName
    signals: tuple[Signal, ...]
    advice: tuple[str, ...]

    @property
    def reasons(self) -> list[str]:
        return [f"{s.name}: {s.explanation}" for s in self.signals if s.grade in ("poor", "weak")]

    def headline(self) -> str:
        why = "; ".join(self.reasons) or "every measured signal is within its threshold"
        return f"The judge is {self.name}: {why}."

    def table(self) -> list[dict]:
        """One row per signal: its estimate and interval, its grade, and the threshold it was held to and why."""
        rows = []
        for s in self.signals:
            threshold = THRESHOLDS[s.name]
            op = "<=" if threshold.lower_is_better else ">="
            rows.append(
                {
                    "signal": s.name,
                    "estimate": str(s.estimate) if s.estimate else "not measured",
                    "grade": s.grade,
                    "good / weak": f"{op} {threshold.good:g} / {op} {threshold.weak:g}",
                    "threshold from": threshold.source,
                }
            )
        return rows


def _kappa_interval(kappa: float, po: float, n: int) -> tuple[float, float]:
    """Cohen's large-sample interval, se = sqrt(po (1 - po) / n) / (1 - pe), with pe read back from kappa."""
    pe = (po - kappa) / (1 - kappa) if kappa < 1 else po
    se = math.sqrt(max(po * (1 - po), 0.0) / n) / max(1 - pe, 1e-9)
    return kappa - Z95 * se, kappa + Z95 * se


def judge_verdict(f: JudgeFigures) -> Verdict:
    """Grade each signal against its threshold, then the judge by its worst graded signal: any poor signal makes
    it unreliable (ECE at worst weak: calibration can be repaired), any weak one weak. Without human labels it is
    at best weak: nothing shows that it agrees with people."""
    signals = []

    def add(name: str, estimate: Estimate | None, graded_value: float | None, explain: str) -> None:
        if estimate is None or graded_value is None:
            signals.append(Signal(name, estimate, "unknown", "not measured: " + explain))
            return
        grade = THRESHOLDS[name].grade(graded_value)
        signals.append(Signal(name, estimate, grade, explain))

    swap = wilson(f.consistent, f.both_orders)
    add(
        "swap consistency",
        swap,
        swap.value if swap else None,
        f"{swap} of pairs keep their winner when the answers swap places" if swap else "no pair judged both ways",
    )
    first = wilson(f.first_picks, 2 * f.both_orders)
    add(
        "first-position bias",
        first,
        abs(first.value - 0.5) if first else None,
        f"the first-shown answer wins {first} of orders; 0.5 is unbiased" if first else "no pair judged both ways",
    )
    agree = wilson(f.agreeing, f.compared)
    add(
        "agreement with people",
        agree,
        agree.low if agree else None,
        f"{agree} of human a/b labels match the judge" if agree else "no pair has both an AI and a human label",
    )
    if f.kappa is not None and agree is not None:
        low, high = _kappa_interval(f.kappa, agree.value, agree.n)
        kappa = Estimate(f.kappa, low, high, agree.n)
        add("Cohen's kappa", kappa, kappa.value, f"{kappa} beyond chance")
    else:
        add("Cohen's kappa", None, None, "needs human labels")
    if f.ece is not None and f.ece_labels:
        ece = Estimate(f.ece, *_ece_interval(f.ece, f.ece_labels), f.ece_labels)
        add("ECE", ece, ece.value, f"{ece}: how far P(a better) is from how often people chose a")
    else:
        add("ECE", None, None, "needs human labels")

    grades = {s.name: s.grade for s in signals}
    hard = [s for s in signals if s.name != "ECE"]
    if all(s.grade == "unknown" for s in signals):
        name: VerdictName = "not enough data"
    elif any(s.grade == "poor" for s in hard):
        name = "unreliable"
    elif any(s.grade in ("poor", "weak") for s in signals) or grades["agreement with people"] == "unknown":
        name = "weak"
    else:
        name = "trustworthy"
    advice = tuple(ADVICE[s.name] for s in signals if s.grade in ("poor", "weak"))
    return Verdict(name, tuple(signals), advice)


def _ece_interval(ece: float, n: int) -> tuple[float, float]:
    """A rough interval: ECE is a mean absolute deviation, whose sampling noise shrinks like 1/sqrt(n); at
    p = 0.5 a bin's frequency has standard error 0.5/sqrt(n). Good enough to say whether a figure is noise."""
    half = Z95 * 0.5 / math.sqrt(n)
    return max(0.0, ece - half), min(1.0, ece + half)


# --- calibration ---------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class CalibrationReport:
    """Figures on the held-out human-labelled pairs, before and after a calibration."""

    method: str
    n_fit: int
    n_held_out: int
    before: dict[str, float | None]
    after: dict[str, float | None]


def ece(p_a: np.ndarray, people_chose_a: np.ndarray, bins: int = 10) -> float | None:
    p, y = np.asarray(p_a, dtype=float), np.asarray(people_chose_a, dtype=float)
    if not len(p):
        return None
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() / len(p) * abs(p[mask].mean() - y[mask].mean())
    return float(total)


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


def calibrate(
    method: Literal["contextual", "platt"],
    pair_ids: list[str],
    p1: np.ndarray,
    p2: np.ndarray,
    people_chose_a: np.ndarray,
    *,
    prior_order1: np.ndarray | None = None,
    prior_order2: np.ndarray | None = None,
) -> tuple[CalibrationReport, PlattScaling | None]:
    """Fit (Platt) on the pairs `held_out` leaves in, then report before and after on the held-out ones.

    Contextual calibration is fitted on content-free pairs instead (its priors, per pair's principle and order),
    so it needs no human labels to fit; it is still reported on the held-out pairs, as Platt is. Platt is fitted on
    each order's P(first shown), so that a bias for the first position is corrected in each order."""
    p1, p2, y = np.asarray(p1, float), np.asarray(p2, float), np.asarray(people_chose_a, float)
    test = held_out(pair_ids)
    fitted: PlattScaling | None = None
    if method == "contextual":
        if prior_order1 is None or prior_order2 is None:
            raise ValueError("contextual calibration needs the judge's priors on content-free pairs, per order")
        new1 = contextual_correction(p1, prior_order1)
        new2 = contextual_correction(p2, prior_order2)
    else:
        fit = ~test
        # order 1 shows a first, so P(first) should predict "a"; order 2 shows b first, so it predicts "b"
        fitted = PlattScaling.fit(np.concatenate([p1[fit], p2[fit]]), np.concatenate([y[fit], 1 - y[fit]]))
        new1, new2 = fitted.apply(p1), fitted.apply(p2)
    report = CalibrationReport(
        method,
        int((~test).sum()),
        int(test.sum()),
        judge_figures(p1[test], p2[test], y[test]),
        judge_figures(new1[test], new2[test], y[test]),
    )
    return report, fitted


# --- disagreement-first annotation ---------------------------------------------------------------------------

FLOOR = 0.05  # every pair keeps a chance to be served, so that the reweighted estimate stays unbiased


def contest_score(
    p1: np.ndarray,
    p2: np.ndarray,
    principle_spread: np.ndarray | None = None,
    annotator_split: np.ndarray | None = None,
) -> np.ndarray:
    """How contested each pair's label is, in [0, 1]: the largest of
    - a flip under swap (the judge picks a different answer once the order changes): 1;
    - closeness of P(a better) to 0.5: 1 - 2 |p_a - 0.5|;
    - disagreement among principles in ensemble mode: their P's spread (max - min);
    - disagreement among annotators: the minority's share times 2 (1 for an even split).
    Missing probabilities (a failed label) count as fully contested."""
    p1, p2 = np.asarray(p1, float), np.asarray(p2, float)
    p_a = (p1 + 1 - p2) / 2
    flip = ((p1 > 0.5) == (p2 > 0.5)).astype(float)
    close = 1 - 2 * np.abs(p_a - 0.5)
    parts = [flip, close]
    for extra in (principle_spread, annotator_split):
        if extra is not None:
            parts.append(np.nan_to_num(np.asarray(extra, float), nan=0.0))
    score = np.max(np.vstack(parts), axis=0)
    return np.where(np.isnan(p_a), 1.0, np.clip(score, 0.0, 1.0))


def queue_order(pair_ids: list[str], scores: np.ndarray, seed: str = "queue") -> list[str]:
    """Sequential Poisson sampling (Ohlsson 1998): pair i gets a fixed uniform u_i (a hash of its id) and the
    queue serves pairs by u_i / w_i, w_i = FLOOR + score. The first n served are then a sample of size n drawn
    with inclusion probability pi_i ~= min(1, n w_i / sum w): contested pairs come first, yet every pair can."""
    weights = FLOOR + np.asarray(scores, float)
    u = np.array([(int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()[:12], 16) + 0.5) / 16**12 for p in pair_ids])
    return [pair_ids[i] for i in np.argsort(u / weights, kind="stable")]


def inclusion_probabilities(weights: np.ndarray, n: int) -> np.ndarray:
    """pi_i = min(1, n w_i / sum w), with the pairs that reach 1 taken out and the rest rescaled, as in
    probability-proportional-to-size sampling."""
    w = np.asarray(weights, float)
    pi = np.zeros_like(w)
    certain = np.zeros(len(w), dtype=bool)
    while True:
        rest = n - certain.sum()
        pi[~certain] = rest * w[~certain] / w[~certain].sum() if rest > 0 else 0.0
        pi[certain] = 1.0
        new = (~certain) & (pi >= 1.0)
        if not new.any():
            return pi
        certain |= new


def reweighted_agreement(agrees: np.ndarray, labelled: np.ndarray, scores: np.ndarray) -> Estimate | None:
    """Agreement over the whole pool from the labels of the first n pairs the queue served: `agrees[k]` is whether
    the judge matched people on pool pair `labelled[k]`, `scores` every pool pair's contest score. Hajek estimator
    sum(a_i / pi_i) / sum(1 / pi_i); its interval from the linearised variance
    sum(((a_i - est) / pi_i)^2) / (sum 1 / pi_i)^2, as for a with-replacement design."""
    agrees = np.asarray(agrees, float)
    if not len(agrees):
        return None
    pi = inclusion_probabilities(FLOOR + np.asarray(scores, float), len(agrees))[np.asarray(labelled)]
    inv = 1.0 / pi
    estimate = float((agrees * inv).sum() / inv.sum())
    se = math.sqrt(float((((agrees - estimate) * inv) ** 2).sum())) / inv.sum()
    return Estimate(estimate, max(0.0, estimate - Z95 * se), min(1.0, estimate + Z95 * se), len(agrees))
