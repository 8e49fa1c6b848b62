"""Is the AI judge an instrument worth trusting? A verdict, calibration, and where a person's label teaches most.

The agreement dashboard measures the judge; this module judges the measurements. Most of it is arithmetic on
arrays the store returns (one row per AI-labelled pair), so the page, the CLI and the tests share it; the last
section ties it to the store and the judge (`calibrate_run`, `score_queue`, `queue_estimates`).

Probabilities follow `feedback.py`: in order 1 response a is shown first and `p1` = P("A"); in order 2 response b
is shown first and `p2` = P("A"), the first-shown option again; the pair's label is p_a = (p1 + 1 - p2) / 2.

Three tools:
- `judge_verdict`: trustworthy, weak or unreliable, from swap consistency, first-position rate, agreement with
  people, Cohen's kappa and ECE, each with a 95% interval, the threshold it was held to and where that comes from.
- Calibration: contextual calibration (Zhao et al. 2021) divides out the judge's prior for the first-shown
  option, measured per principle and order on content-free pairs; Platt scaling (a logistic fit on logit P)
  is then fitted on human-labelled pairs; both are reported before and after on a held-out split, and stored
  together as one calibration of a label run's judge and constitution version.
- Disagreement-first annotation: pairs ordered by how contested their label is, drawn by sequential Poisson
  sampling so that the agreement measured on any prefix of the queue can be reweighted into an unbiased
  estimate (Hajek weights 1/pi), although the queue deliberately over-samples hard pairs.
- `principle_audit`: per principle, agreement with people, position bias, flip rate and how much its SL-CAI
  revisions lowered the judged harm, with what to rewrite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .config import CheckedConfig
from .evaluation import wilson_interval

Grade = Literal["good", "weak", "poor", "unknown"]
VerdictName = Literal["trustworthy", "weak", "unreliable", "not enough data"]
Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float | None  # None, with high, where no interval is defined
    high: float | None
    n: int

    def __str__(self) -> str:
        interval = "interval undefined" if self.low is None or self.high is None else f"{self.low:.2f}, {self.high:.2f}"
        return f"{self.value:.2f} [{interval}] (n={self.n})"


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
    # the judge, or the people, gave one verdict (a or b) throughout: kappa is then 0 whatever the agreement
    kappa_one_sided: bool = False


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
    """Cohen's large-sample interval, se = sqrt(po (1 - po) / n) / (1 - pe), with pe read back from kappa, held
    to [-1, 1], where kappa lives: on a few labels the normal approximation reaches past both ends."""
    pe = (po - kappa) / (1 - kappa) if kappa < 1 else po
    se = math.sqrt(max(po * (1 - po), 0.0) / n) / max(1 - pe, 1e-9)
    return max(-1.0, kappa - Z95 * se), min(1.0, kappa + Z95 * se)


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
    if f.kappa is not None and agree is not None and f.kappa_one_sided:
        # po = pe exactly, so kappa is 0 by construction and its standard error divides by 1 - pe, near 0: it
        # measures nothing here, and grading it would judge the judge on an artefact
        kappa = Estimate(f.kappa, None, None, agree.n)
        explanation = f"{kappa}: the judge or the people gave one verdict throughout, so kappa is 0 whatever they agree"
        signals.append(Signal("Cohen's kappa", kappa, "unknown", "undefined: " + explanation))
    elif f.kappa is not None and agree is not None:
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


def queue_keys(pair_ids: list[str], scores: np.ndarray, seed: str = "queue") -> np.ndarray:
    """Sequential Poisson sampling (Ohlsson 1998): pair i gets a fixed uniform u_i (a hash of its id) and the
    queue serves pairs by the key u_i / w_i, w_i = FLOOR + score. The first n served are then a sample of size n
    drawn with inclusion probability pi_i ~= min(1, n w_i / sum w): contested pairs come first, yet every pair
    can."""
    weights = FLOOR + np.asarray(scores, float)
    u = np.array([(int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()[:12], 16) + 0.5) / 16**12 for p in pair_ids])
    return u / weights


def queue_order(pair_ids: list[str], scores: np.ndarray, seed: str = "queue") -> list[str]:
    """The pairs in the order the disagreement-first queue serves them (`queue_keys`, smallest first)."""
    return [pair_ids[i] for i in np.argsort(queue_keys(pair_ids, scores, seed), kind="stable")]


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


def queue_estimates(agrees: np.ndarray, labelled: np.ndarray, scores: np.ndarray) -> list[Estimate]:
    """How the reweighted estimate tightens as labels come in: the estimate after the first k labelled pairs,
    for every k, in the order they were served."""
    agrees, labelled = np.asarray(agrees, float), np.asarray(labelled)
    return [reweighted_agreement(agrees[:k], labelled[:k], scores) for k in range(1, len(agrees) + 1)]


# --- per-principle audit -------------------------------------------------------------------------------------


def principle_audit(by_principle, revision_steps):
    """Per principle: agreement with people (with its Wilson interval), position bias (the first-position rate's
    distance from 0.5), flip rate (how often its choice changes when the answers swap places), and how much its
    SL-CAI revisions lowered the judged harm (mean P(revision better than the answer before it), from `cai eval
    rounds`; 0.5 is no change). `finding` names the worst of these against the verdict's thresholds: the
    principles to rewrite first."""
    import pandas as pd

    from .evaluation import principle_effects

    effects = principle_effects(revision_steps, resamples=200) if len(revision_steps) else None
    rows = []
    for row in by_principle.itertuples(index=False):
        n = 0 if pd.isna(row.labels_no_ties) else int(row.labels_no_ties)
        agree = wilson(round(row.agreement * n), n) if n and not pd.isna(row.agreement) else None
        first = None if pd.isna(row.first_position_rate) else float(row.first_position_rate)
        flips = None if pd.isna(row.position_consistency) else 1.0 - float(row.position_consistency)
        effect = None
        if effects is not None:
            match = effects[effects.principle_id == row.principle_id]
            effect = match.iloc[0] if len(match) else None
        findings = []
        if flips is not None and THRESHOLDS["swap consistency"].grade(1 - flips) == "poor":
            findings.append("flips under swap")
        if first is not None and THRESHOLDS["first-position bias"].grade(abs(first - 0.5)) == "poor":
            findings.append("favours a position")
        if agree is not None and agree.high < 0.5 + 1e-9:
            findings.append("people read it the other way")
        elif agree is not None and THRESHOLDS["agreement with people"].grade(agree.low) == "poor":
            findings.append("agreement with people not shown above chance")
        if effect is not None and effect.high < 0.5:
            findings.append("its revisions made answers worse")
        rows.append(
            {
                "principle_id": row.principle_id,
                "labels": int(row.pairs),
                "human_labels": n,
                "agreement": agree.value if agree else None,
                "agreement_low": agree.low if agree else None,
                "agreement_high": agree.high if agree else None,
                "first_position_rate": first,
                "position_bias": None if first is None else abs(first - 0.5),
                "flip_rate": flips,
                "revision_p_better": None if effect is None else float(effect.p_better),
                "revisions_judged": 0 if effect is None else int(effect.n),
                "finding": "; ".join(findings) or ("fine" if agree is not None else "no human labels"),
            }
        )
    return pd.DataFrame(rows)


# --- over the store and the judge ----------------------------------------------------------------------------

# Zhao et al. 2021's content-free inputs, as a conversation and both responses: nothing in them to prefer, so
# what the judge prefers is where the option stands. The set is symmetric, so the priors of the two orders differ
# only by what the few-shot examples or reasoning add.
CONTENT_FREE = ("N/A", "[MASK]", "")


def measure_priors(judge, principles) -> dict[str, tuple[float, float]]:
    """The judge's P(first shown) on content-free pairs, per principle and order (mean over the pairs)."""
    from .records import Pair

    pairs = [
        Pair(f"content-free-{i}-{j}", a or " ", a, b, "import", "content-free", 0, "", "")
        for i, a in enumerate(CONTENT_FREE)
        for j, b in enumerate(CONTENT_FREE)
    ]
    verdicts = judge.label([(pair, principle) for principle in principles for pair in pairs])
    priors = {}
    for k, principle in enumerate(principles):
        mine = verdicts[k * len(pairs) : (k + 1) * len(pairs)]
        p1 = [v.p_order1 for v in mine if v.p_order1 is not None]
        p2 = [v.p_order2 for v in mine if v.p_order2 is not None]
        if p1 and p2:
            priors[principle.id] = (float(np.mean(p1)), float(np.mean(p2)))
    return priors


CALIBRATION_INPUT = "calibration_rows"  # the human-labelled AI labels the fit reads, copied in when prepared
CALIBRATED_RUN = "calibrated_run"  # one row: the label run, its judge's name and settings, its principles


@dataclass
class CalibrateConfig(CheckedConfig):
    label_run: str = field(metadata={"help": "The label run whose judge to calibrate."})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Ask this judge model for the priors instead of the run's (e.g. another engine).",
            "model_spec": True,
        },
    )
    run_id: str | None = field(
        default=None, metadata={"help": "The calibration's id; by default cal-RUN-HASH of the labels it is fitted on."}
    )


def prepare_calibration_job(config: CalibrateConfig, workspace, store=None):
    """Create (or find) a calibration's job folder: the run's judge, its settings and its constitution (as the run
    recorded them), and its labels of human-labelled pairs with their counts, copied in from the store (opened
    here unless given), so that the job never opens the database. The job's id is the calibration's:
    cal-RUN-HASH of those labels (and of `model`), so calibrating the same labels again finds the same job."""
    from .auth import require_operator
    from .constitution import parse_constitution
    from .jobs import JobFolder
    from .store import LabelFilter

    require_operator("fit a calibration")
    if config.run_id and JobFolder(workspace.runs_dir / config.run_id).has_input(CALIBRATION_INPUT):
        return JobFolder(workspace.runs_dir / config.run_id)
    if store is None:
        from .store import Store

        with Store.open(workspace) as opened:
            opened.ingest(workspace.runs_dir)
            return prepare_calibration_job(config, workspace, opened)
    run_id = config.label_run
    facets = store.label_facet_rows()
    mine = facets[facets.run_id == run_id]
    if mine.empty:
        raise ValueError(f"label run {run_id!r} has no AI labels: run `cai label` first (or pick another run)")
    label_job = JobFolder(workspace.runs_dir / run_id)
    if not (label_job.path / "run.json").exists():
        raise ValueError(
            f"label run {run_id!r}: its folder {label_job.path} is gone, so its judge cannot be asked again"
        )
    rows = store.calibration_rows(LabelFilter(run_ids=(run_id,)))
    if rows.empty:
        raise ValueError(f"label run {run_id!r}: no pair it judged in both orders has a person's a or b label")
    spec = label_job.spec
    if "constitution" not in spec:
        raise ValueError(
            f"label run {run_id!r}: its run.json holds no constitution, so its judge cannot be asked again"
        )
    fitted_on = hashlib.sha256((rows.to_csv(index=False) + (config.model or "")).encode()).hexdigest()[:8]
    calibrated = {
        "label_run": run_id,
        "judge_model": str(mine.judge_model.iloc[0]),
        "constitution_version": str(mine.constitution_version.iloc[0]),
        "judge_settings": spec.get("config") or {},
        "principles": sorted(set(mine.principle_id)),
    }
    return JobFolder.prepare(
        workspace.runs_dir,
        "calibrate",
        dataclasses.replace(config, run_id=config.run_id or f"cal-{run_id}-{fitted_on}"),
        {},
        model=config.model or spec["model"],
        constitution=parse_constitution(spec["constitution"]["content"], f"run {run_id}"),
        inputs={CALIBRATION_INPUT: json.loads(rows.to_json(orient="records")), CALIBRATED_RUN: [calibrated]},
    )


class CalibrationWork:
    """A calibration as a job (`jobs.run_job`): the judge's priors measured one principle a batch (each spooled as
    `calibration_priors`), then the Platt fit on the copied labels, spooled as `judge_calibrations`; `done` counts
    principles asked and the fit."""

    unit = "step"

    def __init__(self, job, workspace, backend=None):
        from .constitution import parse_constitution

        self.job, self.workspace, self.backend = job, workspace, backend
        self.engine = ""
        self.judge = None
        [self.calibrated] = job.read_input(CALIBRATED_RUN)
        constitution = parse_constitution(job.spec["constitution"]["content"], f"run {self.calibrated['label_run']}")
        self.constitution = constitution
        self.principles = [p for p in constitution.principles if p.id in set(self.calibrated["principles"])]
        self.priors = {
            row["principle_id"]: (row["prior_order1"], row["prior_order2"]) for row in job.read("calibration_priors")
        }
        self.asked = set(self.priors)  # and those asked by this process that gave no prior (no probability)
        self.fitted = job.records_path("judge_calibrations").exists()

    def total(self) -> int:
        return len(self.principles) + 1

    def done(self) -> int:
        return len(self.asked) + int(self.fitted)

    def batches(self):
        yield from ([p] for p in self.principles if p.id not in self.asked)
        if not self.fitted:
            yield []  # the fit

    def step(self, principles) -> None:
        if principles:
            self._measure(principles)
        else:
            self._fit()

    def _measure(self, principles) -> None:
        from .backends import load_backend
        from .feedback import Judge
        from .jobs import engine_name
        from .records import CalibrationPrior, to_row

        if self.judge is None:
            calls = 2 * len(CONTENT_FREE) ** 2 * len(self.principles)
            self.backend = self.backend or load_backend(self.job.spec["model"], self.workspace, calls=calls)
            self.job.record_engines(judge=self.backend)
            self.engine = engine_name(self.backend)
            settings = self.calibrated["judge_settings"]
            self.judge = Judge(
                self.backend,
                self.constitution,
                method=settings.get("method", "auto"),
                cot=settings.get("cot", False),
                cot_tokens=settings.get("cot_tokens", 128),
                cot_band=(settings.get("cot_min", 0.4), settings.get("cot_max", 0.6)),
                few_shot=settings.get("few_shot", 0),
            )
        priors = measure_priors(self.judge, principles)
        self.job.append(
            "calibration_priors",
            [to_row(CalibrationPrior(self.job.run_id, p, first, second)) for p, (first, second) in priors.items()],
        )
        self.priors |= priors
        self.asked |= {p.id for p in principles}

    def _fit(self) -> None:
        import pandas as pd

        from .records import StoredCalibration, to_row

        rows = pd.DataFrame(self.job.read_input(CALIBRATION_INPUT))
        expanded = rows.loc[rows.index.repeat(rows.na + rows.nb)]
        people_chose_a = np.concatenate([[1.0] * int(r.na) + [0.0] * int(r.nb) for r in rows.itertuples()])
        calibration = calibrate(
            list(expanded.pair_id),
            list(expanded.principle_id),
            expanded.p_order1.to_numpy(),
            expanded.p_order2.to_numpy(),
            people_chose_a,
            self.priors,
        )
        stored = StoredCalibration(
            self.job.run_id,
            self.calibrated["label_run"],
            self.calibrated["judge_model"],
            self.calibrated["constitution_version"],
            calibration.platt.slope,
            calibration.platt.bias,
            json.dumps(calibration.report),
        )
        self.job.append("judge_calibrations", [to_row(stored)])
        self.fitted = True


def run_calibration(config: CalibrateConfig, workspace=None, *, backend=None, on_progress=None):
    """Run (or resume) a calibration job to its end; returns its folder (`Store.ingest` takes the result in)."""
    from .jobs import run_job
    from .workspace import Workspace

    workspace = workspace or Workspace.from_env()
    job = prepare_calibration_job(config, workspace)
    return run_job(job, lambda: CalibrationWork(job, workspace, backend), on_progress=on_progress)


def calibrate_run(store, workspace, run_id: str, *, model: str | None = None, backend=None):
    """Calibrate a label run's judge here and now, through its job (`prepare_calibration_job`, `CalibrationWork`):
    its priors measured afresh with the run's judge (or `model`), constitution, few-shot and reasoning settings;
    Platt fitted on the run's labels of human-labelled pairs. Returns the calibration's id and the calibration,
    as the store holds it once it has taken the job's records in."""
    from .jobs import run_job

    job = prepare_calibration_job(CalibrateConfig(label_run=run_id, model=model), workspace, store)
    run_job(job, lambda: CalibrationWork(job, workspace, backend))
    progress = job.progress()
    if progress.status != "done":
        raise ValueError(f"calibration {job.run_id} {progress.status}: {progress.message}")
    store.ingest(workspace.runs_dir)
    return job.run_id, stored_calibration(store, job.run_id)


def stored_calibration(store, calibration_id: str) -> JudgeCalibration:
    found = store.calibrations()
    found = found[found.calibration_id == calibration_id]
    if found.empty:
        raise ValueError(f"no calibration {calibration_id!r}: fit one with `cai calibrate --run-id RUN`")
    row = found.iloc[0]
    return JudgeCalibration(row.priors, PlattScaling(row.slope, row.bias), row.report)


def score_queue(store, run_id: str) -> int:
    """Freeze contest scores and queue keys for the pairs a label run judged (those not scored before): flips
    under swap, P near 0.5, principles' spread, and people's split as it stands now. Returns how many pairs were
    newly scored."""
    import pandas as pd

    inputs = store.queue_score_inputs(run_id)
    if inputs.empty:
        return 0
    labelled = (inputs.na + inputs.nb).to_numpy(float)
    split = np.where(labelled >= 2, 2 * np.minimum(inputs.na, inputs.nb) / np.maximum(labelled, 1), 0.0)
    scores = contest_score(inputs.p1.to_numpy(float), inputs.p2.to_numpy(float), inputs.spread.to_numpy(float), split)
    ids = list(inputs.pair_id)
    frame = pd.DataFrame({"pair_id": ids, "score": scores, "queue_key": queue_keys(ids, scores, seed=run_id)})
    return store.save_queue_scores(run_id, frame)


def queue_tightening(store, run_id: str):
    """The disagreement-first queue's labels so far, as a table of how the agreement estimate tightens: per
    number of labelled pairs k (in serving order), the reweighted estimate with its interval, and the plain mean
    of those pairs' agreement (biased towards the hard pairs the queue serves first)."""
    import pandas as pd

    columns = ["labelled_pairs", "estimate", "low", "high", "plain_mean"]
    scores, served = store.queue_scores(run_id), store.queue_served_labels(run_id)
    inputs = store.queue_score_inputs(run_id)
    if scores.empty or served.empty:
        return pd.DataFrame(columns=columns)
    p_a = dict(zip(inputs.pair_id, (inputs.p1 + 1 - inputs.p2) / 2, strict=True))
    served = served[served.pair_id.map(lambda p: p in p_a and p_a[p] != 0.5)]
    served = served.assign(
        agrees=[(p_a[p] > 0.5) == (c == "a") for p, c in zip(served.pair_id, served.choice, strict=True)]
    )
    per_pair = served.groupby("pair_id", sort=False).agg(agrees=("agrees", "mean"), first=("served_at", "min"))
    per_pair = per_pair.sort_values("first")
    index = {p: i for i, p in enumerate(scores.pair_id)}
    per_pair = per_pair[per_pair.index.map(lambda p: p in index)]
    agrees = per_pair.agrees.to_numpy(float)
    estimates = queue_estimates(agrees, np.array([index[p] for p in per_pair.index]), scores.score.to_numpy(float))
    return pd.DataFrame(
        [(k, e.value, e.low, e.high, float(agrees[:k].mean())) for k, e in enumerate(estimates, start=1)],
        columns=columns,
    )
