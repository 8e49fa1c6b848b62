"""What went wrong in an SL-CAI step: flags a reader filters traces by.

Small models fail in a few recognisable ways, and a trace list that hides them makes a run look better than it
is. Each flag is a cheap text test, computed once when a step is written so that the store can filter on it:

- `empty`: the answer or revision has no text;
- `truncated`: it used every token it was allowed, so it was cut off mid-thought;
- `repetition`: it loops (few distinct word 4-grams, or one line said three times or more);
- `echo`: the revision repeats the revision request or the critique instead of answering;
- `unchanged`: the revision is the answer it was meant to revise, word for word.
"""

from __future__ import annotations

import re
from collections import Counter

FLAGS = ("empty", "truncated", "repetition", "echo", "unchanged")

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
