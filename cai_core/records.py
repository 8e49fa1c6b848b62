"""Typed records: what a job produces and the store keeps. Field names are column names."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields


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


REVISION_VERDICTS = ("better", "same", "worse")
CRITIQUE_VERDICTS = ("valid", "invalid")


def columns(record_type) -> list[str]:
    return [f.name for f in fields(record_type)]


def to_row(record) -> dict:
    return asdict(record)
