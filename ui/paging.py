"""Long lists drawn a page at a time: a page number beside the list, so that a redraw costs one page whatever the
list's length (issue 22: 100k traces, 200 runs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import streamlit as st


def page_count(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))


def current_page(key: str, total: int, per_page: int) -> int:
    """The page KEY's pager is on, kept within the list as it shrinks (a filter, a removed run)."""
    page = min(max(1, int(st.session_state.get(key, 1))), page_count(total, per_page))
    st.session_state[key] = page
    return page


def pager(key: str, total: int, per_page: int, where=st) -> int:
    """The page number input (drawn only when the list does not fit one page); returns the page chosen."""
    page = current_page(key, total, per_page)
    if total > per_page:
        page = where.number_input(f"Page (of {page_count(total, per_page)})", 1, page_count(total, per_page), key=key)
    return page


def page_of(items: list, key: str, per_page: int) -> list:
    """The items on KEY's current page (no widget drawn)."""
    start = (current_page(key, len(items), per_page) - 1) * per_page
    return items[start : start + per_page]


CHOICES_PER_PAGE = 50


def long_choice(
    where,
    label: str,
    key: str,
    find: Callable[[str | None, int, int], list[str]],
    count: Callable[[str | None], int],
    *,
    first: Sequence[str] = (),
    per_page: int = CHOICES_PER_PAGE,
    **selectbox,
) -> str:
    """A selectbox over a list too long to send whole (runs: 200 and more): FIRST ("all", say), then one page of
    the values `find(text, limit, offset)` gives, `count(text)` of them in all. Once they do not fit one page, a
    search box (words the values contain) and a pager are drawn under it. The value chosen stays offered while
    the page or the search moves on."""
    search_key, page_key = f"{key}_search", f"{key}_page"
    text = (st.session_state.get(search_key) or "").strip() or None
    if st.session_state.get(f"{key}_searched", text) != text:  # a new search starts at its first page
        st.session_state[page_key] = 1
    st.session_state[f"{key}_searched"] = text
    total = count(text)
    searching = text is not None or total > per_page
    page = current_page(page_key, total, per_page)
    values = find(text, per_page, (page - 1) * per_page)
    chosen = st.session_state.get(key)
    kept = [chosen] if chosen is not None and chosen not in first and chosen not in values else []
    picked = where.selectbox(label, [*first, *kept, *values], key=key, **selectbox)
    if searching:
        where.text_input(f"Find ({total} shown {per_page} a page)", key=search_key, placeholder="part of a name")
        pager(page_key, total, per_page, where)
    return picked
