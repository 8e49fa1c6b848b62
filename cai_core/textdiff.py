"""Word-level diffs between an answer and its revision."""

from __future__ import annotations

import difflib
import re
from typing import Literal, NamedTuple

Op = Literal["equal", "insert", "delete"]
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


def word_diff(old: str, new: str) -> list[tuple[Op, str]]:
    """Pieces of text tagged equal / insert / delete; joining the non-inserts gives `old`,
    joining the non-deletes gives `new`. Whitespace is kept, so the text reads as written."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    pieces: list[tuple[Op, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            pieces.append(("equal", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(("delete", "".join(a[i1:i2])))
        if j2 > j1:
            pieces.append(("insert", "".join(b[j1:j2])))
    return pieces


def share_little(old: str, new: str, below: float = 0.25) -> bool:
    """True when under a quarter of the longer text survives the word diff unchanged (whitespace aside): a word
    diff of two unrelated texts is a wall of red and green, so show them side by side instead."""
    kept = sum(len(text.strip()) for op, text in word_diff(old, new) if op == "equal")
    longest = max(len(old.strip()), len(new.strip()))
    return longest > 0 and kept / longest < below


class LineRow(NamedTuple):
    """One row of a two-column diff; a side is None where the other side has a line the first lacks."""

    tag: Literal["equal", "delete", "insert", "change"]
    old_no: int | None
    old: str | None
    new_no: int | None
    new: str | None


def side_by_side(old: str, new: str, context: int = 3) -> list[list[LineRow]]:
    """Hunks of line rows for a side-by-side diff, each with `context` unchanged lines around its
    changes (unchanged stretches between hunks are left out). A changed block pairs its old and new
    lines in order. Line numbers count from 1."""
    a, b = old.splitlines(), new.splitlines()
    hunks = []
    for group in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_grouped_opcodes(context):
        rows = []
        for tag, i1, i2, j1, j2 in group:
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                left = (i + 1, a[i]) if i < i2 else (None, None)
                right = (j + 1, b[j]) if j < j2 else (None, None)
                if tag == "equal":
                    kind = "equal"
                elif left[1] is not None and right[1] is not None:
                    kind = "change"
                else:
                    kind = "delete" if right[1] is None else "insert"
                rows.append(LineRow(kind, *left, *right))
        hunks.append(rows)
    return hunks
