"""The Annotate page's labelling panel: a key press shows the next pair at once, and the label follows.

A Streamlit button waits for the server's rerun before the page can draw anything new. This panel is a
custom component (ui/label_keys.js) that holds a small look-ahead of pairs the store has already claimed for
the annotator: a label is made in the browser, the next pair shows from the look-ahead, and the labels go to
the server as the component's "labels" state, which lists every label the server has not acknowledged yet.
Each label carries an event id; the server records an event once (`record_labels`), acknowledges it in the
next draw, and refills the look-ahead. A rerun or a resend stores nothing twice, and the store keeps one
label per pair and annotator whatever happens. Labels made under another name than the page's (the name was
changed before the server had them, across a restart say) are kept in the tab, unsent, until the name is set
back or the person discards them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from cai_core.records import AnnotationItem, HumanLabel
from cai_core.store import Store

KEY = "label_keys"
LOOK_AHEAD = 5  # pairs claimed ahead: enough for a quick hand to run on while the server catches up

HTML = """
<div class="label-keys">
  <div data-part="pair">
    <p data-part="pair-id" class="caption"></p>
    <p class="heading">Conversation</p>
    <pre data-part="prompt" class="prompt"></pre>
    <div class="responses">
      <div class="response-left"><p class="heading">Response A</p><pre data-part="left"></pre></div>
      <div class="response-right"><p class="heading">Response B</p><pre data-part="right"></pre></div>
    </div>
    <label class="rationale">Why (optional)<textarea data-part="rationale" rows="2"></textarea></label>
    <div data-part="choices" class="row"></div>
    <div class="row"><button type="button" data-part="submit" class="primary">Submit</button>
      <span data-part="hint" class="caption"></span></div>
  </div>
  <p data-part="loading" class="caption" hidden>Loading the next pairs…</p>
  <p data-part="status" class="caption"></p>
  <p data-part="waiting" class="caption" hidden><span data-part="waiting-text"></span>
    <button type="button" data-part="discard">Discard them</button></p>
</div>
"""

CSS = """
.label-keys { font-family: var(--st-font); color: var(--st-text-color); }
.heading { font-weight: 600; margin: 0.75rem 0 0.25rem; }
.caption { color: var(--st-text-color); opacity: 0.7; font-size: 0.875rem; margin: 0.25rem 0; }
pre {
  font-family: var(--st-code-font); font-size: 0.875rem; white-space: pre-wrap; overflow-wrap: anywhere;
  background: var(--st-secondary-background-color); border-radius: var(--st-base-radius);
  padding: 0.75rem 1rem; margin: 0;
}
.prompt { max-height: 300px; overflow-y: auto; }
.responses { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.rationale { display: block; margin: 0.75rem 0; font-size: 0.875rem; }
textarea {
  display: block; width: 100%; box-sizing: border-box; margin-top: 0.25rem; font: inherit; color: inherit;
  background: var(--st-secondary-background-color); border: 1px solid var(--st-border-color);
  border-radius: var(--st-base-radius); padding: 0.5rem;
}
.row { display: flex; flex-wrap: wrap; gap: 0.5rem; align-items: center; margin: 0.5rem 0; }
button {
  font: inherit; color: inherit; background: var(--st-background-color); cursor: pointer;
  border: 1px solid var(--st-border-color); border-radius: var(--st-button-radius); padding: 0.35rem 0.75rem;
}
button.chosen, button.primary:enabled {
  background: var(--st-primary-color); border-color: var(--st-primary-color); color: white;
}
button:disabled { opacity: 0.5; cursor: not-allowed; }
"""

_panel = st.components.v2.component(
    "cai_label_keys", html=HTML, css=CSS, js=Path(__file__).with_name("label_keys.js").read_text()
)


@dataclass(frozen=True)
class Recorded:
    """What one server run made of the labels the browser sent."""

    saved: list[HumanLabel]
    refused: list[str]  # one line per label that was not stored, saying why


def record_labels(store: Store) -> Recorded:
    """Store the labels the panel sent that this session has not recorded yet, each once. A label names the
    pair and the choice as shown (left = "a"); the annotator is the one the pair was handed to and the sides
    are the store's for them, never the browser's word, and only a pair this session handed to the panel can
    be labelled. A label that fails otherwise stays unrecorded: the browser keeps sending it until it is."""
    recorded, handed = _session()
    saved, refused = [], []
    for label in _sent_labels():
        event = str(label.get("event", ""))
        if not event or event in recorded:
            continue
        pair_id, choice = str(label.get("pair", "")), str(label.get("choice", ""))
        try:
            if pair_id not in handed:
                if _stored_already(store, label):
                    recorded.add(event)
                    continue
                raise ValueError("that pair was not handed to this page (labelled already, or its claim expired)")
            annotator = handed[pair_id]
            if label.get("annotator") != annotator:  # the browser's word can refuse a label, never place one
                raise ValueError(f"made by {label.get('annotator')!r}, but the pair was handed to {annotator!r}")
            item = AnnotationItem.for_annotator(store.pair(pair_id), annotator)
            saved.append(store.save_human_label(item.label(annotator, choice, str(label.get("rationale", "")))))
        except (ValueError, KeyError) as exc:
            refused.append(f"Not saved (pair {pair_id}): {exc}")
        recorded.add(event)
    return Recorded(saved, refused)


def _stored_already(store: Store, label: dict) -> bool:
    """Whether the store holds LABEL as sent: the tab resends a label its last session stored but could not
    acknowledge (a reload between the two), and this session, which never handed that pair, acknowledges it
    instead of refusing it. It places nothing, so the browser's word is enough here."""
    annotator, pair_id = str(label.get("annotator", "")), str(label.get("pair", ""))
    stored = store.human_labels(annotator=annotator, pair_id=pair_id, limit=1)
    if not stored:
        return False
    item = AnnotationItem.for_annotator(store.pair(pair_id), annotator)
    return item.label(annotator, str(label.get("choice", "")), "").choice == stored[0].choice


def label_panel(
    items: list[AnnotationItem], annotator: str, choices: dict[str, str], shortcuts: dict[str, str], hint: str
) -> None:
    """Mount the panel on ITEMS, the look-ahead claimed for ANNOTATOR, in the order to show them."""
    recorded, handed = _session()
    handed.update((item.pair_id, annotator) for item in items)
    data = {
        "pairs": [{"id": i.pair_id, "prompt": i.prompt, "left": i.left, "right": i.right} for i in items],
        "recorded": [str(label.get("event")) for label in _sent_labels() if str(label.get("event")) in recorded],
        "choices": [[choice, title, shortcuts[choice]] for choice, title in choices.items()],
        "hint": hint,
        "annotator": annotator,
    }
    _panel(key=KEY, data=data)


def _sent_labels() -> list[dict]:
    sent = (st.session_state.get(KEY) or {}).get("labels") or []
    return [label for label in sent if isinstance(label, dict)] if isinstance(sent, list) else []


def _session() -> tuple[set[str], dict[str, str]]:
    """The label events this session recorded, and the annotator each pair it handed to the panel was for."""
    return st.session_state.setdefault("label_keys_recorded", set()), st.session_state.setdefault(
        "label_keys_handed", {}
    )
