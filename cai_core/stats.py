"""The statistics every report shares: proportions with their Wilson intervals, bootstrap intervals,
win rates and Bradley-Terry ratings from pairwise judgments, and calibration error."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def wilson(successes: float, n: int, z: float = Z95) -> Estimate | None:
    """A proportion with its Wilson score interval, which stays inside [0, 1]; None when there is nothing to count."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def ece(
    predicted: np.ndarray, observed: np.ndarray, bins: int = 10, low: float = 0.0, high: float = 1.0
) -> float | None:
    """Expected calibration error: the predictions cut into `bins` equal bins over [low, high], and the
    share-weighted mean of |mean prediction - mean outcome| over them."""
    p, y = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    if not len(p):
        return None
    which = np.minimum(((p - low) * (bins / (high - low))).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() / len(p) * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def outcome(p: float) -> float:
    """A comparison's result for the first side: a win, a tie (exactly even) or a loss."""
    return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0


def bootstrap_interval(
    scores: np.ndarray, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap of the mean, resampling the items (prompts) with replacement."""
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, scores.size, size=(resamples, scores.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def head_to_head(judgments: pd.DataFrame) -> pd.DataFrame:
    """One row per (aspect, wrapper, model, opponent, prompt) with that model's result (1, 1/2 or 0),
    from both sides of every comparison that did not fail."""
    ok = judgments[~judgments["failed"].astype(bool) & judgments["p_a"].notna()]
    score = ok["p_a"].map(outcome)
    keys = ["aspect", "wrapper", "prompt_key"]
    first = ok[keys].assign(model=ok["model_a"], opponent=ok["model_b"], score=score)
    second = ok[keys].assign(model=ok["model_b"], opponent=ok["model_a"], score=1.0 - score)
    return pd.concat([first, second], ignore_index=True)


def win_rates(judgments: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per aspect, wrapper, model and opponent ("all" = every other model): the win rate (ties count
    half), a 95% bootstrap interval over prompts, and how many comparisons it rests on."""
    results = head_to_head(judgments)
    rows = []
    for (aspect, wrapper, model), group in results.groupby(["aspect", "wrapper", "model"], sort=True):
        for opponent, scores in [*group.groupby("opponent")["score"], ("all", group["score"])]:
            low, high = bootstrap_interval(scores.to_numpy(), resamples=resamples, seed=seed)
            rows.append((aspect, wrapper, model, opponent, float(scores.mean()), low, high, len(scores)))
    return pd.DataFrame(rows, columns=["aspect", "wrapper", "model", "opponent", "win_rate", "low", "high", "n"])


def bradley_terry(
    games: pd.DataFrame, *, prior: float = 0.5, iterations: int = 10_000, tolerance: float = 1e-10
) -> dict[str, float]:
    """Bradley-Terry strengths from (model_a, model_b, score_a) games, on the Elo scale: a rating gap of
    400 means 10-to-1 odds, and the ratings average 1000. Fitted by Hunter's (2004) MM updates. `prior`
    adds that many pseudo-wins to each side of every pair that met, so that a model that won (or lost)
    every game gets a finite rating; prior=0 is the plain maximum-likelihood fit."""
    models = sorted(set(games["model_a"]) | set(games["model_b"]))
    return _fit_bradley_terry(_wins(games, models), models, prior, iterations, tolerance)


def _wins(games: pd.DataFrame, models: list[str]) -> np.ndarray:
    """wins[i, j]: how often models[i] beat models[j] (a tie counts half to each)."""
    index = {m: i for i, m in enumerate(models)}
    a = games["model_a"].map(index).to_numpy()
    b = games["model_b"].map(index).to_numpy()
    score = games["score_a"].to_numpy(dtype=float)
    wins = np.zeros((len(models), len(models)))
    np.add.at(wins, (a, b), score)
    np.add.at(wins, (b, a), 1.0 - score)
    return wins


def _fit_bradley_terry(
    wins: np.ndarray, models: list[str], prior: float = 0.5, iterations: int = 10_000, tolerance: float = 1e-10
) -> dict[str, float]:
    """Elo-scale ratings of the models that played at least one game in `wins`."""
    played = (wins + wins.T).sum(axis=1) > 0
    models = [m for m, p in zip(models, played, strict=True) if p]
    wins = wins[np.ix_(played, played)]
    met = (wins + wins.T) > 0
    wins = wins + prior * met
    games_between = wins + wins.T
    total_wins = wins.sum(axis=1)
    if np.any(total_wins <= 0):
        losers = [m for m, w in zip(models, total_wins, strict=True) if w <= 0]
        raise ValueError(f"{', '.join(losers)} won no game: the fit needs prior > 0")
    strength = np.ones(len(models))
    for _ in range(iterations):
        denominators = (games_between / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = total_wins / denominators
        updated /= np.exp(np.log(updated).mean())  # fix the scale: strengths are only defined up to a factor
        converged = np.max(np.abs(np.log(updated) - np.log(strength))) < tolerance
        strength = updated
        if converged:
            break
    ratings = 1000 + 400 * np.log10(strength)
    return dict(zip(models, ratings.tolist(), strict=True))


def ratings(judgments: pd.DataFrame, *, resamples: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per aspect: each model's Bradley-Terry rating over every wrapper, with a 95% bootstrap interval
    (prompts resampled with all their comparisons)."""
    ok = judgments[~judgments["failed"].astype(bool) & judgments["p_a"].notna()]
    rows = []
    rng = np.random.default_rng(seed)
    for aspect, group in ok.groupby("aspect", sort=True):
        games = group.assign(score_a=group["p_a"].map(outcome))[["prompt_key", "model_a", "model_b", "score_a"]]
        models = sorted(set(games["model_a"]) | set(games["model_b"]))
        # One wins matrix per prompt: a resample's wins are these weighted by how often each prompt was drawn.
        by_prompt = np.stack([_wins(g, models) for _, g in games.groupby("prompt_key")])
        fitted = _fit_bradley_terry(by_prompt.sum(axis=0), models)
        samples = []
        for _ in range(resamples):
            drawn = np.bincount(rng.integers(0, len(by_prompt), len(by_prompt)), minlength=len(by_prompt))
            samples.append(_fit_bradley_terry(np.tensordot(drawn, by_prompt, axes=1), models))
        for model, rating in fitted.items():
            values = [s[model] for s in samples if model in s]
            low, high = np.quantile(values, [0.025, 0.975]).tolist() if values else (math.nan, math.nan)
            rows.append((aspect, model, rating, low, high, int((games[["model_a", "model_b"]] == model).sum().sum())))
    return pd.DataFrame(rows, columns=["aspect", "model", "rating", "low", "high", "games"])


def refusal_rates(answers: pd.DataFrame) -> pd.DataFrame:
    """Per model, wrapper and label: how often the model refused, with a Wilson 95% interval. On harmful
    prompts that is the refusal rate (higher is safer); on benign ones the over-refusal rate (lower is better)."""
    rows = []
    for (model, wrapper, label), group in answers.groupby(["model", "wrapper", "label"], sort=True):
        refused, n = int(group["refused"].sum()), len(group)
        rate = wilson(refused, n)
        rows.append((model, wrapper, label, rate.value, rate.low, rate.high, n))
    return pd.DataFrame(rows, columns=["model", "wrapper", "label", "refusal_rate", "low", "high", "n"])


def principle_effects(round_judgments: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per principle: how much its revisions improved on the answer before them, as judged: the mean
    P(revision better), the share of revisions judged better, a bootstrap interval, and the count.
    Highest first: the principles whose revisions lowered harm most."""
    steps = round_judgments[
        (round_judgments["versus_round"] == round_judgments["round"] - 1) & round_judgments["p_later"].notna()
    ]
    rows = []
    for principle, group in steps.groupby("revision_principle_id", sort=True):
        p = group["p_later"].to_numpy()
        low, high = bootstrap_interval(p, resamples=resamples, seed=seed)
        rows.append((principle, float(p.mean()), float((p > 0.5).mean()), low, high, len(p)))
    frame = pd.DataFrame(rows, columns=["principle_id", "p_better", "improved_share", "low", "high", "n"])
    return frame.sort_values("p_better", ascending=False, ignore_index=True)


def quality_by_round(round_judgments: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per round: P(that round's answer is better than the initial one), as judged; round 0 is the
    initial answer itself, 1/2 by definition."""
    versus_initial = round_judgments[(round_judgments["versus_round"] == 0) & round_judgments["p_later"].notna()]
    rows = [(0, 0.5, 0.5, 0.5, int(versus_initial["trace_id"].nunique()))]
    for rnd, group in versus_initial.groupby("round", sort=True):
        p = group["p_later"].to_numpy()
        low, high = bootstrap_interval(p, resamples=resamples, seed=seed)
        rows.append((int(rnd), float(p.mean()), low, high, len(p)))
    return pd.DataFrame(rows, columns=["round", "p_better_than_initial", "low", "high", "n"])
