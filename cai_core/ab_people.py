"""The constitution A/B's verdict audited by people. `send_to_people` stores an A/B's judged "A vs B" pairs (per
prompt, A's final revision against B's, as the judge saw them) where the Annotate page's pair queue serves them, and
freezes their contest scores under the A/B's id (`judge_queue`), so that the page's disagreement-first queue, set to
the A/B, serves them first, the judge's least certain first, as it does a label run's pairs. `people_vs_judge` reads
people's labels on them back against the A/B judge's verdict on each pair (its P(A better), the mean over its
principles): how often people side with it (Cohen's kappa, from `grader_audit.agreement_figures`), and A's win rate
by people beside the judge's on the same pairs. Below `grader_audit.MIN_ANSWERS` labels the A/B's verdict rests on
an unaudited judge, and says so.

The labels are those people gave on whichever queue served the pairs; the disagreement-first one serves contested
pairs first, so while few are labelled the plain agreement leans towards the hard pairs (lower than over all of
them). The labels that queue served are also read as the Agreement page reads a label run's: reweighted by how
likely each pair was to be served (`judge_queue.reweighted_agreement`), an estimate over all the pairs sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .ab import JUDGMENTS, PAIRS, ABError
from .grader_audit import MIN_ANSWERS, agreement_figures
from .job_folder import JobFolder
from .judge_queue import contest_score, queue_keys, reweighted_agreement, served_agreement
from .records import Pair
from .stats import Estimate, bootstrap_interval
from .workspace import Workspace

HEADLINE = "A vs B"  # the comparison people are asked: the A/B's own verdict
CLASSES = ("a", "b")  # a: A's final revision is the better one


@dataclass(frozen=True)
class ABPeople:
    """People against the A/B judge on its "A vs B" pairs."""

    sent: int  # pairs out to people
    labels: int  # people's labels taking a side (a, b or tie) on them
    agreement: Estimate | None  # of people's a/b labels, the share that side with the judge
    kappa: Estimate | None
    people_win_rate: Estimate | None  # A's, by people's labels (ties half), bootstrap interval over labels
    judge_win_rate: Estimate | None  # A's, by the judge, on the same labels' pairs
    # over all the pairs sent, from the labels the A/B's disagreement-first queue served, each pair weighted by
    # 1 / P(served) as the Agreement page reads a label run's queue: what the plain agreement, leaning towards the
    # contested pairs served first, is not
    queue_agreement: Estimate | None = None

    @property
    def audited(self) -> bool:
        return self.labels >= MIN_ANSWERS

    def __str__(self) -> str:
        if not self.sent:
            return "A/B judge: unaudited (its A vs B pairs have not been sent to people)"
        rates = (
            f"A's win rate by people {self.people_win_rate}, by the judge on the same pairs {self.judge_win_rate}"
            if self.people_win_rate
            else "no labels yet"
        )
        if not self.audited:
            return (
                f"A/B judge: unaudited ({self.labels} of the {MIN_ANSWERS} people's labels needed on its "
                f"{self.sent} pairs sent to the Annotate page); {rates}"
            )
        if self.kappa is None or self.kappa.low is None:
            return f"A/B judge: agreement with people {self.agreement}; kappa undefined (one side throughout); {rates}"
        over_all = (
            f"; agreement over all its pairs, reweighted for the queue's order, {self.queue_agreement}"
            if self.queue_agreement
            else ""
        )
        return (
            f"A/B judge: agreement with people κ {self.kappa.value:.2f} [{self.kappa.low:.2f}, "
            f"{self.kappa.high:.2f}] (n={self.kappa.n}); {rates}{over_all}"
        )


def _judged_pairs(ws: Workspace, run_id: str) -> pd.DataFrame:
    """Per judged "A vs B" pair of the A/B: pair_id, p1, p2 (per order, mean over principles), spread (of the
    principles' P(A better)) and p_a (their mean)."""
    job = JobFolder(ws.runs_dir / run_id)
    if not (job.path / "run.json").exists() or job.spec.get("kind") != "ab":
        raise ABError(f"no A/B run {run_id!r} under {ws.runs_dir}")
    judge = JobFolder(ws.runs_dir / f"{run_id}-judge")
    records = judge.records(JUDGMENTS) if judge.path.exists() else []
    judged = pd.DataFrame(
        [j for j in records if j["comparison"] == HEADLINE and not j["failed"] and j["p_a"] is not None],
        columns=["pair_id", "p_order1", "p_order2", "p_a"],
    )
    return judged.groupby("pair_id", as_index=False).agg(
        p1=("p_order1", "mean"),
        p2=("p_order2", "mean"),
        spread=("p_a", lambda p: p.max() - p.min()),
        p_a=("p_a", "mean"),
    )


def send_to_people(ws: Workspace, store, run_id: str) -> int:
    """Put the A/B's judged "A vs B" pairs on the Annotate page's queue, scored for its disagreement-first order;
    returns how many pairs were new. Pairs judged later go out on the next call (earlier ones keep their scores)."""
    judged = _judged_pairs(ws, run_id)
    if judged.empty:
        raise ABError(f"A/B {run_id}: no A vs B pair judged yet; send its pairs once the judge stage has begun")
    wanted = set(judged["pair_id"])
    stage = JobFolder(ws.runs_dir / f"{run_id}-judge")
    pairs = [Pair(**row["pair"]) for row in stage.input_rows(PAIRS) if row["pair"]["pair_id"] in wanted]
    added = store.add_pairs(pairs)
    scores = contest_score(judged["p1"].to_numpy(float), judged["p2"].to_numpy(float), judged["spread"].to_numpy())
    ids = list(judged["pair_id"])
    store.save_queue_scores(
        run_id, pd.DataFrame({"pair_id": ids, "score": scores, "queue_key": queue_keys(ids, scores, seed=run_id)})
    )
    return added


def people_vs_judge(ws: Workspace, store, run_id: str, *, resamples: int = 2000, seed: int = 0) -> ABPeople:
    """People's labels on the A/B's pairs against its judge's verdict on each."""
    judged = _judged_pairs(ws, run_id).set_index("pair_id")
    sent = len(store.queue_scores(run_id))
    labels = store.ab_pair_choices(run_id)
    labels = labels[labels["pair_id"].isin(judged.index)]
    if labels.empty:
        return ABPeople(sent, 0, None, None, None, None)
    p_a = judged.loc[labels["pair_id"], "p_a"].to_numpy()
    people = labels["choice"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy()
    judge = np.where(p_a > 0.5, 1.0, np.where(p_a < 0.5, 0.0, 0.5))

    def rate(scores: np.ndarray) -> Estimate:
        low, high = bootstrap_interval(scores, resamples=resamples, seed=seed)
        return Estimate(float(scores.mean()), low, high, len(scores))

    # Agreement on the labels where both took a side: people's choice (rows) against the judge's (columns),
    # weighted by each verdict's share of all the A/B's judged pairs.
    sided = (people != 0.5) & (judge != 0.5)
    confusion = np.zeros((2, 2))
    np.add.at(confusion, ((people[sided] == 0.0).astype(int), (judge[sided] == 0.0).astype(int)), 1)
    verdicts = judged["p_a"][judged["p_a"] != 0.5]
    shares = np.array([(verdicts > 0.5).mean(), (verdicts < 0.5).mean()]) if len(verdicts) else np.array([0.5, 0.5])
    agreement, kappa = agreement_figures(confusion, shares)
    served = store.queue_served_labels(run_id)
    queue_agreement = None
    if not served.empty:
        scores = store.queue_scores(run_id)
        agrees, labelled = served_agreement(served, scores, judged["p_a"].to_dict())
        queue_agreement = reweighted_agreement(agrees, labelled, scores["score"].to_numpy(float))
    return ABPeople(sent, len(labels), agreement, kappa, rate(people), rate(judge), queue_agreement)
