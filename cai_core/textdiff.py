"""Word-level diffs between an answer and its revision."""

from __future__ import annotations

import difflib
import re
from typing import Literal

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
