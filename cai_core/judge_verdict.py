"""Is the AI judge an instrument worth trusting? Its verdict, and which principles to rewrite.

`judge_verdict`: trustworthy, weak or unreliable, from swap consistency, first-position rate, agreement with
people, Cohen's kappa and ECE, each with a 95% interval, the threshold it was held to and where that comes from.
`principle_audit`: per principle, agreement with people, position bias, flip rate and how much its SL-CAI
revisions lowered the judged harm, held to the same thresholds, with what to rewrite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .stats import Z95, Estimate, principle_effects, wilson

Grade = Literal["good", "weak", "poor", "unknown"]
VerdictName = Literal["trustworthy", "weak", "unreliable", "not enough data"]


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


def kappa_interval(kappa: float, po: float, n: int) -> tuple[float, float]:
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
        low, high = kappa_interval(f.kappa, agree.value, agree.n)
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


MONITOR_MIN_PAIRS = 32  # pairs judged both ways before the labelling monitor grades the judge: fewer are noise


@dataclass
class PositionMonitor:
    """The monitor of a job that judges (labelling, evaluation): the judge's position figures as its verdicts come
    in, which need no people (in each order the judge picks the first-shown answer when its P > 0.5, as
    `Store.agreement_cells` counts them), and a warning when either is poor by the verdict's thresholds."""

    both_orders: int = 0
    consistent: int = 0
    first_picks: int = 0
    warned: str = ""  # the warning `count` last returned

    def count(self, rows: Iterable[dict]) -> str | None:
        """Add each verdict row's two orders; the warning ("" once it no longer holds) when it changed, else None:
        a job records each change once."""
        for row in rows:
            self.add(row["p_order1"], row["p_order2"])
        warning = self.warning()
        if warning == self.warned:
            return None
        self.warned = warning
        return warning

    def add(self, p_order1: float | None, p_order2: float | None) -> None:
        if p_order1 is None or p_order2 is None:
            return
        first1, first2 = p_order1 > 0.5, p_order2 > 0.5
        self.both_orders += 1
        self.consistent += first1 != first2
        self.first_picks += first1 + first2

    def warning(self) -> str:
        if self.both_orders < MONITOR_MIN_PAIRS:
            return ""
        verdict = judge_verdict(JudgeFigures(self.both_orders, self.consistent, self.first_picks, 0, 0, None, None, 0))
        poor = [s for s in verdict.signals if s.grade == "poor"]
        if not poor:
            return ""
        found = "; ".join(f"{s.name}: {s.explanation}" for s in poor)
        return f"judge position monitor: {found}. {' '.join(ADVICE[s.name] for s in poor)}"


def _ece_interval(ece: float, n: int) -> tuple[float, float]:
    """A rough interval: ECE is a mean absolute deviation, whose sampling noise shrinks like 1/sqrt(n); at
    p = 0.5 a bin's frequency has standard error 0.5/sqrt(n). Good enough to say whether a figure is noise."""
    half = Z95 * 0.5 / math.sqrt(n)
    return max(0.0, ece - half), min(1.0, ece + half)


def principle_audit(by_principle, revision_steps):
    """Per principle: agreement with people (with its Wilson interval), position bias (the first-position rate's
    distance from 0.5), flip rate (how often its choice changes when the answers swap places), and how much its
    SL-CAI revisions lowered the judged harm (mean P(revision better than the answer before it), from `cai eval
    rounds`; 0.5 is no change). `finding` names the worst of these against the verdict's thresholds: the
    principles to rewrite first."""
    import pandas as pd

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
