"""What went wrong in an SL-CAI step: flags a reader filters traces by.

Small models fail in a few recognisable ways, and a trace list that hides them makes a run look better than it
is. Each flag is a cheap text test:

- `empty`: the answer or revision has no text;
- `truncated`: it used every token it was allowed, so it was cut off mid-thought;
- `repetition`: it loops (few distinct word 4-grams, or one line said three times or more);
- `echo`: the revision repeats the revision request or the critique instead of answering;
- `unchanged`: the revision is the answer it was meant to revise, word for word.

The flags are computed when they are read, not stored: word n-grams and repeated lines are Python, not SQL, and
flags stored at ingest would need a migration and a backfill, and would keep yesterday's rules on old traces when a
rule changes. So the store narrows traces by its SQL filters and hands over their steps' text
(`Store.steps_to_flag`), `flagged_traces` keeps those with a flag, and the store pages over the ids it kept. That
reads every step of the matching traces once per filter: about half a millisecond a step on a 2-core CPU, so
a few seconds for ten thousand steps (the Traces page keeps the answer until the filter or the data change).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .constitution import ConstitutionError, parse_constitution

if TYPE_CHECKING:
    from .records import TraceStep
    from .store import Store, TraceFilter

FLAGS = ("empty", "truncated", "repetition", "echo", "unchanged")
DEFAULT_MAX_NEW_TOKENS = 128  # what "truncated" is measured against when a run did not record its limit

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def loops(text: str, *, n: int = 4, min_words: int = 16, distinct_below: float = 0.5) -> bool:
    """True when the text repeats itself: under half of its word 4-grams are distinct, or a line (of at least
    three words) comes back three times or more."""
    words = _words(text)
    if len(words) >= min_words:
        grams = _ngrams(words, n)
        if len(set(grams)) / len(grams) < distinct_below:
            return True
    lines = Counter(line.strip().lower() for line in text.splitlines() if len(_words(line)) >= 3)
    return any(count >= 3 for count in lines.values())


def echoes(revision: str, source: str, *, n: int = 5, share: float = 0.6) -> bool:
    """True when most of `source`'s word 5-grams reappear in the revision: it was copied, not acted on."""
    source_grams = set(_ngrams(_words(source), n))
    if not source_grams:
        return False
    return len(source_grams & set(_ngrams(_words(revision), n))) / len(source_grams) >= share


def step_flags(
    response: str,
    response_tokens: int,
    max_new_tokens: int,
    *,
    previous: str | None = None,
    critique: str | None = None,
    revision_request: str | None = None,
) -> list[str]:
    """The flags of one step, in `FLAGS` order. `previous`, `critique` and `revision_request` are given for a
    revision (round > 0) and left out for the initial answer."""
    flags = []
    if not response.strip():
        flags.append("empty")
    if response_tokens >= max_new_tokens:
        flags.append("truncated")
    if loops(response):
        flags.append("repetition")
    if any(echoes(response, source) for source in (critique, revision_request) if source):
        flags.append("echo")
    if previous is not None and _words(previous) == _words(response) and response.strip():
        flags.append("unchanged")
    return flags


def trace_flags(
    steps: Iterable[TraceStep], max_new_tokens: int | None, revision_requests: dict[str, str]
) -> dict[int, list[str]]:
    """Each step's flags by round, for one trace's steps in round order; `revision_requests` maps a principle id
    to its revision request in the trace's constitution version (a missing one is not checked for echo)."""
    flags, previous = {}, None
    for step in steps:
        if not step.stopped:  # a stopped round has no revision to judge
            flags[step.round] = step_flags(
                step.response,
                step.response_tokens,
                max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                previous=previous if step.round > 0 else None,
                critique=step.critique,
                revision_request=revision_requests.get(step.principle_id or ""),
            )
        previous = step.response
    return flags


def stored_revision_requests(store: Store, version: str) -> dict[str, str]:
    """Principle id -> revision request in one stored constitution version; empty when it is not stored."""
    try:
        return {p.id: p.revision_request for p in parse_constitution(store.constitution_text(version)).principles}
    except (KeyError, ConstitutionError):
        return {}


def flags_by_trace(store: Store, where: TraceFilter) -> dict[str, dict[int, list[str]]]:
    """Each matching trace's flags by round, judged by its run's token limit and its constitution version's
    revision requests, as the store hands them over (`Store.steps_to_flag`)."""
    steps = store.steps_to_flag(where)
    steps = steps.astype(object).where(steps.notna(), None)  # a missing critique or limit is None, not NaN
    requests = {version: stored_revision_requests(store, version) for version in steps["constitution_version"].unique()}
    found = {}
    for trace_id, rows in steps.groupby("trace_id", sort=False):
        first = rows.iloc[0]
        found[trace_id] = trace_flags(
            rows.itertuples(), first["max_new_tokens"], requests[first["constitution_version"]]
        )
    return found


def flagged_traces(store: Store, flags: Iterable[str], where: TraceFilter) -> tuple[str, ...]:
    """The ids of the traces matching `where` that have a step with any of `flags`."""
    wanted = set(flags)
    unknown = wanted - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown flag {', '.join(sorted(unknown))}; choose from {', '.join(FLAGS)}")
    return tuple(
        trace_id
        for trace_id, by_round in flags_by_trace(store, where).items()
        if any(wanted.intersection(step) for step in by_round.values())
    )
