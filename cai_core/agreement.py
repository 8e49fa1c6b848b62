"""Do the AI judge's labels agree with people's? Every figure of the agreement dashboard.

The store does the counting (`cai_core.store.agreement`) and returns a few hundred count cells; the
figures (agreement, Cohen's kappa, ECE, Krippendorff's alpha, position bias) are arithmetic on those
cells. That keeps a million labels within a fraction of a second, where pulling them into Python would
take seconds.

Conventions:
- A person's "both bad" counts as a tie (neither response is preferred); "skip" is no label.
- The AI's verdict is "a" when P(a better) > 0.5 + tie_band, "b" when below 0.5 - tie_band, else "tie";
  without ties it is which side of 0.5 the probability lies on (exactly 0.5 is no verdict).
- AI-versus-human figures compare the AI's verdict with each human label of the pair (two annotators
  on one pair count twice), as inter-annotator agreement is counted.
- For an ensemble run the pair's label is the mean over principles; "by principle" uses each
  principle's own label instead.
- Position: in each order the judge picks the first-shown option when its P("A") > 0.5. It is
  consistent when it picks the same response in both orders; the first-position rate is how often it
  picks whichever was shown first (0.5 is unbiased).
- With a calibration (`judge_audit.calibrate_run`), every figure reads the labels through it, and only the
  labels of the judge model and constitution version it was fitted for are selected.
- Tables hold NaN where a figure is undefined (nothing to compare; kappa when both raters used a
  single class; alpha when no pair has two labels or everyone used one class).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .judge_verdict import JudgeFigures, Verdict, judge_verdict, principle_audit
from .store import LabelFilter, Store

GROUPINGS = {
    "run": ("run_id", "judge_model", "constitution_version", "strategy", "cot"),
    "model": ("judge_model",),
    "version": ("constitution_version",),
    "principle": ("principle_id",),
}
HUMAN_CLASSES = ("a", "b", "tie")
TABLE_COLUMNS = [
    "pairs",
    "failed",
    "labels_no_ties",
    "agreement",
    "kappa",
    "labels_with_ties",
    "agreement_with_ties",
    "kappa_with_ties",
    "position_consistency",
    "first_position_rate",
    "ece",
]

# What the dashboard's tables call each column in words, and what it means: (label, help). The tables keep their
# names (the CLI prints them, and code reads them); a page shows these.
COLUMN_WORDS = {
    "run_id": ("Label run", "The AI labelling run (its folder under runs/)."),
    "judge_model": ("Judge model", "The model that gave the AI labels."),
    "constitution_version": ("Constitution version", "The version (a hash) of the constitution the judge read."),
    "strategy": ("Principles asked", "sample: one principle per pair; ensemble: every enabled one, averaged."),
    "cot": ("Reasoned first", "Whether the judge reasoned before its verdict (chain of thought)."),
    "principle_id": ("Principle", "The constitution's principle the judge was asked under."),
    "pairs": ("AI labels", "Labels the judge gave: one per pair, or one per pair and principle in the principle rows."),
    "labels": ("AI labels", "Labels the judge gave under this principle."),
    "failed": ("Failed", "Labels for which the judge gave no readable answer."),
    "labels_no_ties": ("Compared (no ties)", "People's a/b labels on pairs the judge decided, ties left out."),
    "human_labels": ("People's labels", "People's a/b labels on the pairs the judge labelled under it."),
    "agreement": ("Agreement", "Share of people's a/b labels the judge's verdict matches, ties left out; 0.5: chance."),
    "agreement_low": ("Agreement, 95% low", "Lower end of the agreement's Wilson 95% interval."),
    "agreement_high": ("Agreement, 95% high", "Upper end of the agreement's Wilson 95% interval."),
    "kappa": ("Cohen's kappa", "Agreement beyond chance, ties left out: 0 is chance, 1 perfect."),
    "labels_with_ties": ("Compared (with ties)", "People's labels of every kind (tie and both bad count as tie)."),
    "agreement_with_ties": (
        "Agreement (with ties)",
        "As agreement, with the judge's tie band and people's ties counted as a third verdict.",
    ),
    "kappa_with_ties": ("Kappa (with ties)", "Cohen's kappa over the three verdicts a, b and tie."),
    "position_consistency": ("Swap consistency", "Share of pairs whose winner survives swapping the answers' places."),
    "swap_consistency": ("Swap consistency", "Share of pairs whose winner survives swapping the answers' places."),
    "first_position_rate": (
        "First-position rate",
        "How often the judge picks whichever answer is shown first; 0.5 is unbiased.",
    ),
    "position_bias": ("Position bias", "The first-position rate's distance from 0.5."),
    "flip_rate": ("Flip rate", "How often its choice changes when the answers swap places."),
    "ece": (
        "Calibration error",
        "Expected calibration error (ECE): how far P(a better) is from how often people chose a.",
    ),
    "revision_p_better": (
        "Revision P(better)",
        "How often its SL-CAI revisions beat the answer before them, as a rounds evaluation judged; 0.5: no change.",
    ),
    "revisions_judged": ("Revisions judged", "SL-CAI revisions under it that a rounds evaluation judged."),
    "finding": ("Finding", "What fails the verdict's thresholds: the principles to rewrite first."),
    "decision": ("Gate", "keep, down-weight, drop or unjudged: how much this principle's labels count in training."),
    "weight": ("Weight", "Its labels' weight in a pair's P(A) for training: 1 kept, 0 dropped, 2a - 1 down-weighted."),
    "reason": ("Why", "The figures the gate's decision rests on, against its rule."),
    "stage": ("Stage", "before: the judge's own; contextual: its prior divided out; after: then Platt scaling."),
    "signal": ("Signal", "What the verdict measures of the judge."),
    "estimate": ("Estimate", "The measured value, its 95% interval and how many labels it rests on."),
    "grade": ("Grade", "good, weak or poor against the thresholds; unknown where not measured."),
    "good / weak": ("Good / weak", "The thresholds: at or beyond the first is good, the second weak, else poor."),
    "threshold from": ("Threshold from", "Where the thresholds come from."),
}


@dataclass(frozen=True)
class Alpha:
    """Krippendorff's alpha (nominal) among people: the agreement a judge could hope to reach."""

    alpha: float | None
    pairs: int  # pairs with at least two labels (the only ones alpha can use)
    labels: int  # labels on those pairs


@dataclass(frozen=True)
class Reliability:
    bins: pd.DataFrame  # bin, lower, upper, n, mean_p, frac_a: predicted P(a better) against how often people chose a
    ece: float | None  # expected calibration error: the n-weighted mean of |mean_p - frac_a| over bins
    n: int


@dataclass(frozen=True)
class Dashboard:
    by_run: pd.DataFrame
    by_model: pd.DataFrame
    by_version: pd.DataFrame
    by_principle: pd.DataFrame
    confusion: pd.DataFrame  # rows: the human label, columns: the AI's verdict (with ties)
    reliability: Reliability
    alpha: Alpha
    disagreements: pd.DataFrame
    overall: pd.Series  # every figure of TABLE_COLUMNS pooled over the selected labels (each run's pair labels)
    verdict: Verdict  # is the judge, over these labels, an instrument to trust? (`judge_verdict`)
    principle_audit: pd.DataFrame  # per principle: agreement, position bias, flips, revision effect, finding


def _run_filter(run_id: str | None) -> LabelFilter:
    return LabelFilter(run_ids=() if run_id is None else (run_id,))


def _long(cells: list[dict]) -> list[tuple]:
    """Cells with one entry per human class: (h, v3, v2, bin, n labels, sum of P(a better) over them)."""
    entries = []
    for c in cells:
        if c["v3"] is None:
            continue  # failed labels: no probability to compare
        for h, k in (("a", "a"), ("b", "b"), ("tie", "t")):
            if c[f"n{k}"]:
                entries.append((h, c["v3"], c["v2"], c["bin"], c[f"n{k}"], c[f"p{k}"]))
    return entries


def cohen_kappa(confusion) -> float | None:
    """Cohen's kappa from a square confusion matrix (rows one rater, columns the other, same classes in
    the same order); None when chance agreement is 1, i.e. both raters used one and the same class."""
    counts = np.asarray(confusion, dtype=float)
    total = counts.sum()
    if total == 0:
        return None
    observed = counts.trace() / total
    expected = float((counts.sum(axis=1) * counts.sum(axis=0)).sum()) / total**2
    if expected >= 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))


def _confusion(entries: list[tuple], column: int, classes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Human label (rows) against the AI's verdict in entry column `column` (1: with ties, 2: without)."""
    counts: dict[tuple[str, str], int] = {}
    for entry in entries:
        key = (entry[0], entry[column])
        counts[key] = counts.get(key, 0) + entry[4]
    classes = classes or tuple(sorted({k for pair in counts for k in pair}))
    return pd.DataFrame(
        [[counts.get((r, c), 0) for c in classes] for r in classes], index=list(classes), columns=list(classes)
    )


def _reliability(entries: list[tuple], bins: int) -> Reliability:
    n, sum_p, hits = [0] * bins, [0.0] * bins, [0] * bins
    for h, _, _, b, count, p in entries:
        if h in ("a", "b"):
            n[b] += count
            sum_p[b] += p
            hits[b] += count if h == "a" else 0
    frame = pd.DataFrame(
        {
            "bin": range(bins),
            "lower": [b / bins for b in range(bins)],
            "upper": [(b + 1) / bins for b in range(bins)],
            "n": n,
            "mean_p": [s / k if k else None for s, k in zip(sum_p, n, strict=True)],
            "frac_a": [x / k if k else None for x, k in zip(hits, n, strict=True)],
        }
    )
    total = sum(n)
    if not total:
        return Reliability(frame, None, 0)
    ece = sum(k / total * abs(s / k - x / k) for s, x, k in zip(sum_p, hits, n, strict=True) if k)
    return Reliability(frame, ece, total)


def _metrics(cells: list[dict], bins: int) -> dict:
    """Every figure of one group, from its cells."""
    both = sum(c["both_orders"] for c in cells)
    out: dict = {
        "pairs": sum(c["ai_rows"] for c in cells),
        "failed": int(sum(c["failures"] or 0 for c in cells)),
        "position_consistency": sum(c["consistent"] for c in cells) / both if both else None,
        "first_position_rate": sum(c["firsts"] or 0 for c in cells) / (2 * both) if both else None,
    }
    entries = _long(cells)
    out["labels_with_ties"] = sum(e[4] for e in entries)
    if not entries:
        return {**out, "labels_no_ties": 0}
    out["agreement_with_ties"] = sum(e[4] for e in entries if e[0] == e[1]) / out["labels_with_ties"]
    out["kappa_with_ties"] = cohen_kappa(_confusion(entries, 1))
    binary = [e for e in entries if e[0] in ("a", "b") and e[2] is not None]
    out["labels_no_ties"] = sum(e[4] for e in binary)
    if binary:
        out["agreement"] = sum(e[4] for e in binary if e[0] == e[2]) / out["labels_no_ties"]
        out["kappa"] = cohen_kappa(_confusion(binary, 2))
    out["ece"] = _reliability(entries, bins).ece
    return out


def judge_figures(cells: list[dict], bins: int) -> JudgeFigures:
    """The counts a reliability verdict reads, from the same cells as the figures."""
    entries = _long(cells)
    binary = [e for e in entries if e[0] in ("a", "b") and e[2] is not None]
    reliability = _reliability(entries, bins)
    confusion = _confusion(binary, 2).to_numpy()
    return JudgeFigures(
        both_orders=int(sum(c["both_orders"] for c in cells)),
        consistent=int(sum(c["consistent"] for c in cells)),
        first_picks=int(sum(c["firsts"] or 0 for c in cells)),
        agreeing=int(sum(e[4] for e in binary if e[0] == e[2])),
        compared=int(sum(e[4] for e in binary)),
        kappa=cohen_kappa(confusion) if binary else None,
        ece=reliability.ece,
        ece_labels=reliability.n,
        kappa_one_sided=bool(binary) and min((confusion.sum(0) > 0).sum(), (confusion.sum(1) > 0).sum()) < 2,
    )


CELL_KEYS = {"run": "k_run", "model": "k_model", "version": "k_version", "principle": "k_principle"}


def _table(cells: list[dict], grouping: str, bins: int) -> pd.DataFrame:
    keys = list(GROUPINGS[grouping])
    groups: dict[str, list[dict]] = {}
    for c in cells:
        if c[CELL_KEYS[grouping]] is not None:
            groups.setdefault(c[CELL_KEYS[grouping]], []).append(c)
    rows = []
    for value, group in sorted(groups.items()):
        row = {keys[0]: value}
        if grouping == "run":  # one judge, one constitution version and one strategy per run
            row |= {"judge_model": group[0]["run_model"], "constitution_version": group[0]["run_version"]}
            row |= {"strategy": group[0]["strategy"], "cot": any(c["cot"] for c in group)}
        rows.append(row | _metrics(group, bins))
    return pd.DataFrame(rows, columns=[*keys, *TABLE_COLUMNS])


def _alpha(store: Store, labels: LabelFilter) -> Alpha:
    """alpha = 1 - (n - 1) * (n - sum_c o_cc) / (n^2 - sum_c n_c^2), from the per-pair counts, where
    o_cc = sum over pairs of n_uc (n_uc - 1) / (m_u - 1) and n_c = sum over pairs of n_uc (pairs with m_u >= 2).
    With no AI-label filter it reads every pair people labelled, else the selected labels' pairs."""
    units, n, na, nb, nt, oa, ob, ot = store.alpha_counts(labels)
    if not units:
        return Alpha(None, 0, 0)
    expected = n * n - (na * na + nb * nb + nt * nt)
    if expected == 0:
        return Alpha(None, int(units), int(n))
    return Alpha(float(1.0 - (n - 1) * (n - (oa + ob + ot)) / expected), int(units), int(n))


def _confidence_floor(entries: list[tuple], bins: int, limit: int) -> float:
    """A confidence |P(a better) - 0.5| that at least `limit` disagreeing labels reach, read off the bins,
    so that the disagreement query joins only the labels above it (0 when fewer disagree)."""
    per_bin: dict[int, int] = {}
    for h, _, v2, b, n, _ in entries:
        if {h, v2} == {"a", "b"}:
            per_bin[b] = per_bin.get(b, 0) + n
    # the least confidence any probability in a bin can have: 0 for a bin that straddles 0.5
    floors = {b: max(b / bins - 0.5, 0.5 - (b + 1) / bins, 0.0) for b in per_bin}
    found = 0
    for b in sorted(per_bin, key=lambda b: -floors[b]):
        found += per_bin[b]
        if found >= limit:
            return max(floors[b] - 1e-9, 0.0)  # the margin absorbs rounding in floor(p * bins)
    return 0.0


@dataclass(frozen=True)
class LabelFacets:
    """What the dashboard's filters can choose from; runs newest first."""

    run_ids: list[str]
    judge_models: list[str]
    constitution_versions: list[str]
    principles: list[str]


def label_facets(store: Store) -> LabelFacets:
    """The distinct runs, judges, versions and principles of the AI labels: one grouping pass, no agreement
    computed, so a page can offer its filters before it asks for the figures."""
    frame = store.label_facet_rows()
    runs = frame.groupby("run_id")["latest"].max().sort_values(ascending=False)
    return LabelFacets(
        run_ids=list(runs.index),
        judge_models=sorted(frame["judge_model"].dropna().unique()),
        constitution_versions=sorted(frame["constitution_version"].dropna().unique()),
        principles=sorted(frame["principle_id"].dropna().unique()),
    )


def inter_human_alpha(store: Store, *, run_id: str | None = None) -> Alpha:
    """Nominal Krippendorff's alpha over people's labels (a, b, tie; both_bad counts as tie, skip as
    missing), on every pair or on the pairs a run labelled."""
    return _alpha(store, _run_filter(run_id))


def disagreements(store: Store, *, run_id: str | None = None, limit: int = 50) -> pd.DataFrame:
    """Pairs where the AI's verdict and a person's label (a or b) differ, the most confident AI first,
    with both responses, the labels and the judge's per-order probabilities."""
    return store.disagreements(_run_filter(run_id), limit)


def judge_model_verdict(store: Store, judge_model: str, tie_band: float = 0.05, bins: int = 10) -> Verdict:
    """The verdict on a judge model over every AI label it gave (all its runs): how far to trust what else it
    judged, such as an evaluation's win rates. The dashboard's verdict, for one judge model's labels."""
    cells = store.agreement_cells(LabelFilter(judge_models=(judge_model,)), tie_band, bins)
    return judge_verdict(judge_figures([c for c in cells if c["k_run"] is not None], bins))


def label_run_verdict(store: Store, run_id: str, tie_band: float = 0.05, bins: int = 10) -> Verdict:
    """The verdict on one label run's judge, from its labels that people labelled too."""
    cells = store.agreement_cells(LabelFilter(run_ids=(run_id,)), tie_band, bins)
    return judge_verdict(judge_figures([c for c in cells if c["k_run"] is not None], bins))


def dashboard(
    store: Store,
    *,
    run_id: str | None = None,
    run_ids: Iterable[str] | None = None,
    principles: Iterable[str] | None = None,
    judge_models: Iterable[str] | None = None,
    constitution_versions: Iterable[str] | None = None,
    tie_band: float = 0.05,
    bins: int = 10,
    disagreement_limit: int = 50,
    calibration: str | None = None,
) -> Dashboard:
    """Every figure, over the AI labels the filters select (all by default; `run_id` is `run_ids=[run_id]`).
    Each filter keeps the labels with any of its values, and an empty one keeps all. Confusion, reliability
    and `overall` pool whatever is selected: select one run to read one judge's calibration rather than a
    mixture. `calibration`: a stored calibration's id, to read the labels through it (its judge model and
    constitution version only)."""
    if not 0.0 <= tie_band < 0.5:
        raise ValueError(f"tie band {tie_band}: expected 0 <= band < 0.5")
    if bins < 1:
        raise ValueError(f"bins {bins}: expected at least 1")
    if run_id is not None and run_ids is not None:
        raise ValueError("pass run_id or run_ids, not both")
    if calibration is not None:
        stored = store.calibrations()
        found = stored[stored.calibration_id == calibration]
        if found.empty:
            raise ValueError(f"no calibration {calibration!r}: fit one with `cai calibrate --run-id RUN`")
        judge_models, constitution_versions = [found.judge_model.iloc[0]], [found.constitution_version.iloc[0]]
    labels = LabelFilter(
        run_ids=(run_id,) if run_id is not None else tuple(run_ids or ()),
        principles=tuple(principles or ()),
        judge_models=tuple(judge_models or ()),
        constitution_versions=tuple(constitution_versions or ()),
        calibration_id=calibration,
    )
    cells = store.agreement_cells(labels, tie_band, bins)
    per_pair = [c for c in cells if c["k_run"] is not None]
    pooled = _long(per_pair)
    confusion = _confusion(pooled, 1, HUMAN_CLASSES)
    confusion.index.name, confusion.columns.name = "human", "ai"
    tables = {name: _table(cells, name, bins) for name in GROUPINGS}
    return Dashboard(
        by_run=tables["run"],
        by_model=tables["model"],
        by_version=tables["version"],
        by_principle=tables["principle"],
        confusion=confusion,
        reliability=_reliability(pooled, bins),
        alpha=_alpha(store, labels),
        disagreements=store.disagreements(
            labels, disagreement_limit, _confidence_floor(pooled, bins, disagreement_limit)
        ),
        overall=pd.Series(_metrics(per_pair, bins), index=TABLE_COLUMNS, dtype=float),
        verdict=judge_verdict(judge_figures(per_pair, bins)),
        principle_audit=principle_audit(tables["principle"], store.revision_steps()),
    )
