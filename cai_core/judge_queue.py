"""Disagreement-first annotation: the pairs a person should label first, and what their labels say of the whole.

Pairs are ordered by how contested their label is, drawn by sequential Poisson sampling so that the agreement
measured on any prefix of the queue can be reweighted into an unbiased estimate (Hajek weights 1/pi), although
the queue deliberately over-samples hard pairs.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .stats import Z95, Estimate

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


def served_agreement(served, scores, p_a: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """What `reweighted_agreement` reads, from the labels a disagreement-first queue served (pair_id, choice,
    served_at: `store.queue_served_labels`) and its frozen scores (`store.queue_scores`): per labelled pair, in the
    order it was first served, the share of its labels that side with the judge's P(a better) `p_a`, and its place
    among the scored pairs. Pairs the judge put at exactly one half, or the queue never scored, are left out."""
    served = served[served.pair_id.map(lambda p: p in p_a and p_a[p] != 0.5)]
    served = served.assign(
        agrees=[(p_a[p] > 0.5) == (c == "a") for p, c in zip(served.pair_id, served.choice, strict=True)]
    )
    per_pair = served.groupby("pair_id", sort=False).agg(agrees=("agrees", "mean"), first=("served_at", "min"))
    per_pair = per_pair.sort_values("first")
    index = {p: i for i, p in enumerate(scores.pair_id)}
    per_pair = per_pair[per_pair.index.map(lambda p: p in index)]
    return per_pair.agrees.to_numpy(float), np.array([index[p] for p in per_pair.index], dtype=int)
