"""How the pages show text. Prompts and model outputs are red-team material, and every other piece of user data
(names, ids, categories, messages) may be hostile too: it is shown with `st.code` / `st.text`, which render text
literally (no markdown, no HTML, no links), or, where only markdown will do (alerts, labels), `md_escape`d.

The one place that builds HTML is the word diff, where every piece of text goes through `html.escape` and the
result goes to `st.html`, which runs no script and, unlike `st.markdown`, never reads the text as markdown (an
escaped `![x](http://...)` stays text, not a remote image).
"""

from __future__ import annotations

import datetime
import html
import re

import streamlit as st

from cai_core.backends import Chat
from cai_core.textdiff import side_by_side, word_diff


def flash(kind: str, message: str) -> None:
    """Keep a message for the next run: callbacks run before the page is drawn, and a message they wrote
    directly would be wiped by that draw."""
    st.session_state["flash"] = (kind, message)


def show_flash() -> None:
    if "flash" in st.session_state:
        kind, message = st.session_state.pop("flash")
        show = {"success": st.success, "error": st.error, "info": st.info}[kind]
        show("  \n".join(md_escape(line) for line in message.splitlines()))


def show_text(text: str | None, *, height: int | str = "content") -> None:
    """Model or prompt text, literally: st.code never interprets markdown or HTML."""
    if not text:
        st.caption("(empty)")
        return
    st.code(text, language=None, wrap_lines=True, height=height)


def md_escape(text: str) -> str:
    """Text for places that read markdown (alerts, widget labels, expander titles), shown as typed. Escaping
    leaves bare URLs, www. names and e-mail addresses to become links (GFM finds them in the raw text), so a
    zero-width space breaks each; text with no such place goes to `st.text` or `show_text` instead."""
    text = re.sub(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", "\u200b", text)
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", text)


DIFF_STYLE = (
    "white-space:pre-wrap;font-family:'Source Code Pro',monospace;font-size:0.9rem;line-height:1.5;"
    "padding:0.75rem 1rem;border:1px solid rgba(128,128,128,0.35);border-radius:0.5rem"
)
INSERT_STYLE = "background:#c8f0c8;color:#0a3d0a;text-decoration:none"
DELETE_STYLE = "background:#ffd0d0;color:#5c0000;text-decoration:line-through"


def diff_html(old: str, new: str) -> str:
    """The word diff of `old` -> `new` as HTML: insertions green, deletions red and struck through.
    Every piece of text is escaped; only the tags written here are HTML."""
    parts = []
    for op, text in word_diff(old, new):
        piece = html.escape(text)
        if op == "insert":
            parts.append(f'<ins style="{INSERT_STYLE}">{piece}</ins>')
        elif op == "delete":
            parts.append(f'<del style="{DELETE_STYLE}">{piece}</del>')
        else:
            parts.append(piece)
    return f'<div class="word-diff" style="{DIFF_STYLE}">{"".join(parts)}</div>'


def show_word_diff(old: str, new: str) -> None:
    st.html(diff_html(old, new))


def side_by_side_html(old: str, new: str) -> str:
    """A two-column line diff as an HTML table; every line of text is escaped."""
    colors = {"delete": ("#ffd0d0", ""), "insert": ("", "#c8f0c8"), "change": ("#ffe9c2", "#fff3c2")}
    rows = []
    for n, hunk in enumerate(side_by_side(old, new)):
        if n:
            rows.append('<tr><td colspan="4" style="text-align:center;color:#888">⋯</td></tr>')
        for row in hunk:
            left_bg, right_bg = colors.get(row.tag, ("", ""))
            cells = []
            for number, text, background in ((row.old_no, row.old, left_bg), (row.new_no, row.new, right_bg)):
                cells.append(f'<td style="color:#888;text-align:right;padding:0 0.5rem">{number or ""}</td>')
                cells.append(
                    f'<td style="background:{background or "transparent"};white-space:pre-wrap;'
                    f'padding:0 0.5rem;width:50%">{html.escape(text or "")}</td>'
                )
            rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<table class="side-by-side" style="width:100%;border-collapse:collapse;font-family:monospace;'
        f'font-size:0.85rem">{"".join(rows)}</table>'
    )


def chat_transcript(chat: Chat) -> str:
    """A chat as plain text, one block per message, exactly as the model receives the messages."""
    return "\n\n".join(f"[{message['role']}]\n{message['content']}" for message in chat)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
