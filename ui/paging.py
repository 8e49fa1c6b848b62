"""Long lists drawn a page at a time: a page number beside the list, so that a redraw costs one page whatever the
list's length (issue 22: 100k traces, 200 runs)."""

from __future__ import annotations

import math

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
