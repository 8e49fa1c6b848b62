"""Typed records: what a job produces and the store keeps. Field names are column names."""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field, fields


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class Trace:
    """One answer to one prompt, followed through its critique→revision rounds."""

    trace_id: str
    run_id: str
    prompt_id: str
    prompt: str
    category: str
    sample_index: int
    model: str
    constitution_name: str
    constitution_version: str
    created_at: float = field(default_factory=now)
    warning: str | None = None  # what went wrong on the way in, e.g. a prompt cut to fit the model's context


@dataclass(frozen=True)
class TraceStep:
    """Round 0 is the initial answer (no principle, no critique); round k>0 is critique k and revision k."""

    trace_id: str
    round: int
    principle_id: str | None
    critique: str | None
    response: str
    prompt_tokens: int
    critique_tokens: int
    response_tokens: int
    seconds: float
    stopped: bool = False  # the critique asked for no change, so the trace ends here
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class Run:
    run_id: str
    kind: str  # "generate", later "label", "train-sft", ...
    config: str  # the job's config as JSON
    model: str
    constitution_name: str | None
    constitution_version: str | None
    status: str  # pending | running | done | failed | cancelled
    done: int
    total: int
    message: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StepVerdict:
    """A person's judgment of one round of a trace. One per (trace, round, annotator): saving again edits it."""

    trace_id: str
    round: int
    annotator: str
    revision_verdict: str | None  # better | same | worse
    critique_verdict: str | None  # valid | invalid
    note: str = ""
    updated_at: float = field(default_factory=now)


MAX_NOTE_CHARS = 10_000
"""The longest note or rationale a person may attach (a verdict's note, a label's rationale, a saved version's
note): a page of text, while a stored megabyte would be shown, exported and copied with every label."""


def check_note(field_name: str, text: str, where: str) -> None:
    """Refuse a note over MAX_NOTE_CHARS, naming `where` it was written and the field."""
    if len(text) > MAX_NOTE_CHARS:
        raise ValueError(f"{where}: the {field_name} holds {len(text):,} characters; it may hold {MAX_NOTE_CHARS:,}")


REVISION_VERDICTS = ("better", "same", "worse")
CRITIQUE_VERDICTS = ("valid", "invalid")


@dataclass(frozen=True)
class Pair:
    """Two responses to one prompt, to be compared. `prompt` is what came before the responses: one user
    message, or a transcript in hh-rlhf form ("Human: ...\n\nAssistant: ...\n\nHuman: ...")."""

    pair_id: str
    prompt: str
    response_a: str
    response_b: str
    source: str  # sampled | sl-cai | import
    origin: str  # the run, trace or file the pair came from
    origin_index: int  # its place in that origin (prompt index, line number): pairs are listed in this order
    origin_a: str  # where response_a came from: a sample index, "initial" / "revision", "chosen" / "rejected"
    origin_b: str
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class AILabel:
    """An AI judge's soft label for one pair under one principle, asked in both orders.

    `p_order1` is P("A") when response_a is shown as (A); `p_order2` is P("A") when response_b is shown as
    (A). `p_a`, the probability that response_a is the better one, is the mean of p_order1 and
    1 - p_order2 (clamped to the chain-of-thought band when `cot`); None when `failed`."""

    run_id: str
    pair_id: str
    principle_id: str
    judge_model: str
    constitution_version: str
    strategy: str  # sample (one principle per pair) | ensemble (every enabled principle)
    method: str  # logprob (option log-probabilities) | strict (generated letter, for endpoints without them)
    cot: bool
    few_shot: int
    p_order1: float | None
    p_order2: float | None
    p_a: float | None
    failed: bool  # an order's answer could not be read (strict method) or had no probability (-inf for both)
    reasoning_1: str | None = None  # the chain of thought per order, when `cot`
    reasoning_2: str | None = None
    seconds: float = 0.0
    created_at: float = field(default_factory=now)
    p_a_calibrated: float | None = None  # p_a read through `calibration_id`, when the run named one as it labelled
    calibration_id: str | None = None


@dataclass(frozen=True)
class HumanLabel:
    """A person's choice on a pair. One per (pair, annotator): saving again edits it.

    `choice` is about response_a / response_b, whatever sides they were shown on; `shown_swapped`
    records that response_a was shown on the right (as "B")."""

    pair_id: str
    annotator: str
    choice: str  # a | b | tie | both_bad | skip
    shown_swapped: bool = False
    rationale: str = ""
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    imported_by: str = ""  # the login that imported it; "" where the annotator saved it in the app


def shown_swapped(annotator: str, pair_id: str) -> bool:
    """Whether this annotator sees the pair with its sides swapped: a fixed coin per (annotator, pair), so
    that each person's sides are random but stay the same across sessions and reloads."""
    return hashlib.sha256(f"{annotator}\0{pair_id}".encode()).digest()[0] & 1 == 1


@dataclass(frozen=True)
class AnnotationItem:
    """A pair as one annotator sees it: sides randomised per annotator, the mapping kept here, not shown."""

    pair_id: str
    prompt: str
    left: str  # shown as "A"
    right: str  # shown as "B"
    shown_swapped: bool

    @classmethod
    def for_annotator(cls, pair: Pair, annotator: str, swapped: bool | None = None) -> AnnotationItem:
        """The pair with this annotator's sides (`swapped` given: as a stored label says they saw it)."""
        swapped = shown_swapped(annotator, pair.pair_id) if swapped is None else swapped
        left, right = (pair.response_b, pair.response_a) if swapped else (pair.response_a, pair.response_b)
        return cls(pair.pair_id, pair.prompt, left, right, swapped)

    def label(self, annotator: str, shown_choice: str, rationale: str = "") -> HumanLabel:
        """The label for what the annotator clicked ("a" = the left side), turned back into pair terms."""
        if shown_choice not in HUMAN_CHOICES:
            raise ValueError(f"choice {shown_choice!r}: expected one of {', '.join(HUMAN_CHOICES)}")
        flipped = {"a": "b", "b": "a"}.get(shown_choice, shown_choice) if self.shown_swapped else shown_choice
        return HumanLabel(self.pair_id, annotator, flipped, self.shown_swapped, rationale)


@dataclass(frozen=True)
class TrainMetric:
    """One logged number of a training run at one optimiser step (loss, reward, kl, ...)."""

    run_id: str
    step: int
    name: str
    value: float
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class InspectScore:
    """One headline metric of one scorer of an Inspect evaluation (`inspect_eval.py`), with the log it came from."""

    run_id: str
    task: str
    model: str  # as Inspect names it: cai/<model spec>
    scorer: str
    metric: str  # accuracy, stderr, ...
    value: float
    log: str  # the Inspect log's file, in the job's folder
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class TrainedModel:
    """Where a finished training run left its model: a folder any model spec can name."""

    run_id: str
    kind: str  # train-sft | train-rm | train-ppo | train-dpo | train-grpo | train-rloo
    path: str
    base_model: str
    step: int
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class EvalAnswer:
    """One model's answer to one evaluation prompt, as sent (after its jailbreak wrapper, if any)."""

    run_id: str
    prompt_key: str  # "<set>/<prompt id>": ids are unique within a set, not across sets
    wrapper: str  # "none" or a jailbreak wrapper's name
    model: str  # the model's name in this run
    set_name: str
    prompt: str  # the prompt as the set has it
    sent: str  # the prompt as the model received it
    category: str
    label: str  # harmful | benign
    answer: str
    refused: bool
    tokens: int
    seconds: float
    created_at: float = field(default_factory=now)
    refusal_p: float | None = None  # the judge's P(refusal), when refusals are read by the judge


@dataclass(frozen=True)
class EvalJudgment:
    """The judge's comparison of two models' answers to one prompt, on one aspect, asked in both orders.
    `p_a` is the probability that model_a's answer is the better one (None when `failed`)."""

    run_id: str
    prompt_key: str
    wrapper: str
    aspect: str  # harmlessness (a constitution principle) | helpfulness (a fixed question)
    model_a: str
    model_b: str
    principle_id: str
    p_order1: float | None
    p_order2: float | None
    p_a: float | None
    failed: bool
    judge_model: str
    constitution_version: str
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class RoundJudgment:
    """The judge's comparison of an SL-CAI trace's answer at `round` with its answer at `versus_round`
    (the round before it, or the initial answer). `p_later` is the probability that the later one is better."""

    run_id: str
    trace_id: str
    round: int
    versus_round: int
    revision_principle_id: str  # the principle that round's critique and revision used
    judge_principle_id: str  # the principle the judge compared under
    p_order1: float | None
    p_order2: float | None
    p_later: float | None
    failed: bool
    judge_model: str
    constitution_version: str
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class CalibrationPrior:
    """A judge's P(first shown) on content-free pairs under one principle, in each order, as a calibration job
    measured it (`judge_audit.CalibrationWork`)."""

    calibration_id: str
    principle_id: str
    prior_order1: float
    prior_order2: float


@dataclass(frozen=True)
class StoredCalibration:
    """A label run's judge calibration: its Platt fit, and its report (JSON) on held-out human labels; its priors
    are `CalibrationPrior` records of the same id."""

    calibration_id: str
    run_id: str  # the label run it calibrates
    judge_model: str
    constitution_version: str
    slope: float
    bias: float
    report: str
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class IngestProblem:
    """Something ingest kept out of the store: a spooled line (its file and 1-based line) or a whole job
    whose run.json or progress.json cannot be read (line 0, or the line of a JSON error)."""

    path: str
    line: int
    problem: str
    seen_at: float

    def __str__(self) -> str:
        return f"{self.path}" + (f":{self.line}" if self.line else "") + f": {self.problem}"


PAIR_SOURCES = ("sampled", "sl-cai", "import")
HUMAN_CHOICES = ("a", "b", "tie", "both_bad", "skip")


def columns(record_type) -> list[str]:
    return [f.name for f in fields(record_type)]


@functools.cache
def _field_names(record_type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(record_type))


def to_row(record) -> dict:
    # Every record's fields are plain values, so a shallow copy is the row: `asdict` deep-copies each value and
    # cost a job about 1 ms a record, more than the rest of the workbench's own work on it.
    return {name: getattr(record, name) for name in _field_names(type(record))}
