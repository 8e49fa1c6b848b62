"""The Constitution page's draft: constitution data <-> the editor's widget state, and the editor's button
callbacks that add, copy, move and delete principles and examples (they run before the page is drawn)."""

from __future__ import annotations

import streamlit as st

from cai_core.constitution import FewShotExample, unique_principle_id

TEXT_FIELDS = ("id", "name", "critique_request", "revision_request", "preference_question")
EXAMPLE_FIELDS = tuple(FewShotExample.model_fields)
ss = st.session_state


def new_uid() -> str:
    """Widget keys of a principle or example follow it when it moves, so they are named by a uid, not a position."""
    ss["uid_seq"] = ss.get("uid_seq", 0) + 1
    return f"u{ss['uid_seq']}"


def add_principle_state(principle: dict) -> str:
    uid = new_uid()
    for field in TEXT_FIELDS:
        ss[f"{uid}_{field}"] = principle.get(field, "")
    ss[f"{uid}_tags"] = ", ".join(principle.get("tags", []))
    ss[f"{uid}_enabled"] = principle.get("enabled", True)
    return uid


def add_example_state(example: dict) -> str:
    uid = new_uid()
    for field in EXAMPLE_FIELDS:
        ss[f"{uid}_{field}"] = example.get(field, "")
    return uid


def load_draft(file_name: str, data: dict) -> None:
    """Put constitution data into the editor's widgets (before they are drawn in this run)."""
    ss["draft_file"] = file_name
    ss["c_name"] = data.get("name", "")
    ss["c_description"] = data.get("description", "")
    generation = data.get("generation", {})
    ss["c_rounds"] = generation.get("rounds", 4)
    ss["c_sampling"] = generation.get("principle_sampling", "random")
    ss["c_stop"] = "\n".join(generation.get("stop_phrases", []))
    ss["draft_principles"] = [add_principle_state(p) for p in data.get("principles", [])]
    ss["draft_examples"] = [add_example_state(e) for e in data.get("few_shot_examples", [])]


def split(text: str, separator: str | None) -> list[str]:
    return [part.strip() for part in text.split(separator) if part.strip()]


def principle_data(uid: str) -> dict:
    return {
        **{field: ss[f"{uid}_{field}"] for field in TEXT_FIELDS},
        "tags": split(ss[f"{uid}_tags"], ","),
        "enabled": ss[f"{uid}_enabled"],
    }


def draft_data() -> dict:
    return {
        "name": ss["c_name"],
        "description": ss["c_description"],
        "principles": [principle_data(uid) for uid in ss["draft_principles"]],
        "few_shot_examples": [{f: ss[f"{uid}_{f}"] for f in EXAMPLE_FIELDS} for uid in ss["draft_examples"]],
        "generation": {
            "rounds": ss["c_rounds"],
            "principle_sampling": ss["c_sampling"],
            "stop_phrases": split(ss["c_stop"], "\n"),
        },
    }


def draft_is_whole() -> bool:
    keys = ["c_name", "c_description", "c_rounds", "c_sampling", "c_stop"]
    keys += [f"{uid}_{f}" for uid in ss.get("draft_principles", []) for f in (*TEXT_FIELDS, "tags", "enabled")]
    keys += [f"{uid}_{f}" for uid in ss.get("draft_examples", []) for f in EXAMPLE_FIELDS]
    return "draft_file" in ss and all(key in ss for key in keys)


def principle_ids() -> list[str]:
    return [ss[f"{uid}_id"] for uid in ss["draft_principles"]]


def add_principle() -> None:
    blank = {"id": unique_principle_id("new-principle", principle_ids()), "name": "New principle"}
    ss["draft_principles"].append(add_principle_state(blank))


def duplicate_principle(uid: str) -> None:
    copy = principle_data(uid)
    copy["id"] = unique_principle_id(f"{copy['id']}-copy", principle_ids())
    copy["name"] = f"{copy['name']} (copy)"
    order = ss["draft_principles"]
    order.insert(order.index(uid) + 1, add_principle_state(copy))


def move_principle(uid: str, step: int) -> None:
    order = ss["draft_principles"]
    i = order.index(uid)
    order[i], order[i + step] = order[i + step], order[i]


def delete_principle(uid: str) -> None:
    ss["draft_principles"].remove(uid)


def add_example() -> None:
    ss["draft_examples"].append(add_example_state({}))


def delete_example(uid: str) -> None:
    ss["draft_examples"].remove(uid)
