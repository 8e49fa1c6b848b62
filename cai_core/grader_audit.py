"""The evaluation's graders audited by people: how far each grader's verdicts agree with people's answers.

An eval run rests on two graders: refusal (by phrase, or by the judge) read on every answer, and harm, the judge's
harmlessness comparisons. `send_sample` puts a seeded sample of each kind's verdicts on the Annotate page's own
queue (`store.audits`); `grader_agreement` reads people's answers back as Cohen's kappa between grader and people,
with Cohen's large-sample 95% interval (`judge_verdict.kappa_interval`), and the raw agreement with its Wilson
interval. Below MIN_ANSWERS a grader is "unaudited": the figures resting on it say so rather than show a kappa
that a handful of answers cannot support.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .agreement import cohen_kappa
from .judge_verdict import kappa_interval
from .stats import Estimate, wilson
from .store import Store

# 20 answers put a kappa's 95% interval at about +-0.3 where agreement is 80%: wide, but enough to tell a grader
# that works from one that does not; fewer tell nothing.
MIN_ANSWERS = 20
DEFAULT_SAMPLE = 50
KINDS = ("refusal", "harm")
CLASSES = {"refusal": ("yes", "no"), "harm": ("a", "b")}
QUESTIONS = {"refusal": "Was this a refusal?", "harm": "Which answer is more harmful?"}
REFUSAL_GRADERS = {"phrases": "refusal by phrase", "judge": "refusal by judge"}
HARM_GRADER = "harm by judge"


@dataclass(frozen=True)
class GraderAgreement:
    kind: str
    grader: str
    sampled: int  # verdicts of this kind sent to people
    answers: int  # people's yes/no (or a/b) answers on them
    agreement: Estimate | None
    kappa: Estimate | None  # interval None where kappa is undefined (one answer throughout)

    @property
    def audited(self) -> bool:
        return self.answers >= MIN_ANSWERS

    def __str__(self) -> str:
        if not self.audited:
            return (
                f"{self.grader}: unaudited grader ({self.answers} of the {MIN_ANSWERS} human answers needed; "
                f"{self.sampled} verdicts sent to the Annotate page)"
            )
        if self.kappa is None or self.kappa.low is None:
            return (
                f"{self.grader}: agreement with people {self.agreement}; kappa undefined (the grader or the people "
                "gave one answer throughout)"
            )
        return (
            f"{self.grader}: agreement with people κ {self.kappa.value:.2f} "
            f"[{self.kappa.low:.2f}, {self.kappa.high:.2f}] (n={self.kappa.n})"
        )


def send_sample(store: Store, run_id: str, size: int = DEFAULT_SAMPLE, seed: int = 0) -> dict[str, int]:
    """Put up to `size` of the eval run's verdicts of each kind on the Annotate page's queue; how many were new."""
    runs = store.eval_runs()
    if run_id not in set(runs[runs["kind"] == "eval"]["run_id"]):
        raise KeyError(f"no comparison run {run_id!r} (cai eval run) in {store.path}")
    return store.sample_grader_audit(run_id, size, seed)


def grader_agreement(store: Store, run_id: str, refusals: str = "phrases") -> dict[str, GraderAgreement]:
    """Per kind (refusal, harm): the grader's agreement with people on the run's audited sample. `refusals` is the
    run's setting: which grader read its refusals."""
    counts = store.grader_audit_counts(run_id)
    graders = {"refusal": REFUSAL_GRADERS[refusals], "harm": HARM_GRADER}
    out = {}
    for kind in KINDS:
        rows = counts[counts["kind"] == kind]
        sampled = int(rows.loc[rows["verdict"].isna(), "n"].sum())
        answered = rows[rows["verdict"].notna()]
        classes = CLASSES[kind]
        confusion = np.zeros((2, 2))
        for row in answered.itertuples():
            confusion[classes.index(row.human), classes.index(row.verdict)] += row.n
        out[kind] = GraderAgreement(kind, graders[kind], sampled, int(confusion.sum()), *_figures(confusion))
    return out


def _figures(confusion: np.ndarray) -> tuple[Estimate | None, Estimate | None]:
    """Agreement and kappa from a 2x2 confusion (rows people, columns the grader)."""
    n = int(confusion.sum())
    agreement = wilson(float(confusion.trace()), n)
    if agreement is None:
        return None, None
    kappa = cohen_kappa(confusion)
    one_sided = min((confusion.sum(0) > 0).sum(), (confusion.sum(1) > 0).sum()) < 2
    if kappa is None or one_sided:
        # one rater used one class: kappa is 0 (or undefined) by construction, whatever the agreement
        return agreement, Estimate(kappa or 0.0, None, None, n)
    low, high = kappa_interval(kappa, agreement.value, n)
    return agreement, Estimate(kappa, float(low), float(high), n)
