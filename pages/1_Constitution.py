"""Constitution editor: pick or create a constitution, edit it, save versions, diff and restore them,
preview the exact prompts a principle produces, and try one critique→revision with the selected model.

The draft lives in widget state (kept for the whole session, so it survives page switches); the file on
disk changes only when Save or Restore writes a constitution that validates.
"""

import hashlib

import streamlit as st

from cai_core.backends import SamplingParams, load_backend
from cai_core.constitution import (
    ConstitutionError,
    constitution_from_data,
    copy_constitution,
    diff_constitutions,
    draft_yaml,
    list_constitutions,
    load_constitution,
    parse_constitution,
    save_constitution,
)
from cai_core.critique import critique_chat, critique_once, revision_chat
from cai_core.feedback import comparison_chat
from cai_core.jobs import engine_name
from cai_core.records import MAX_NOTE_CHARS
from ui.constitution_ab import ab_form, ab_runs_section
from ui.constitution_draft import (
    EXAMPLE_FIELDS,
    add_example,
    add_principle,
    delete_example,
    delete_principle,
    draft_data,
    draft_is_whole,
    duplicate_principle,
    load_draft,
    move_principle,
)
from ui.settings import connect, follow_context, setup
from ui.text import (
    chat_transcript,
    count,
    flash,
    md_escape,
    show_flash,
    show_text,
    show_word_diff,
    side_by_side_html,
    when,
)

settings = setup("Constitution")
ws = settings.workspace
ss = st.session_state

KEEP = "session"  # persist_state for the draft's widgets


# --- actions (button callbacks: they run before the page is drawn) --------------------------------------


def remember_file_version(store, path) -> None:
    """Before a save from here overwrites the file, keep what is on disk if the history lacks it (a file
    never saved here, or edited elsewhere), so that it can still be diffed and restored."""
    try:
        on_disk = load_constitution(path)
    except ConstitutionError:
        return
    history = store.constitution_history(path)
    if history.empty or history["version"].iloc[0] != on_disk.version:
        store.record_constitution(on_disk, path, "as found on disk")


def save_draft(path) -> None:
    try:
        constitution = constitution_from_data(draft_data(), path.name)
    except ConstitutionError as exc:
        flash("error", f"Not saved, the file is unchanged:\n{exc}")
        return
    with connect(ws) as store:
        remember_file_version(store, path)
        try:
            save_constitution(constitution, path)
        except ConstitutionError as exc:  # valid, but more than the loader reads back
            flash("error", f"Not saved, the file is unchanged:\n{exc}")
            return
        store.record_constitution(constitution, path, ss["save_note"].strip())
    ss["save_note"] = ""
    load_draft(path.name, constitution.model_dump(mode="json"))
    flash("success", f"Saved {path.name} as version {constitution.version}.")


def discard_draft(path) -> None:
    try:
        load_draft(path.name, load_constitution(path).model_dump(mode="json"))
    except ConstitutionError as exc:  # the file was broken elsewhere; the draft is all there is
        flash("error", f"The file does not load, so the draft stays:\n{exc}")


def restore_version(path, version: str) -> None:
    with connect(ws) as store:
        constitution = parse_constitution(store.constitution_text(version), f"version {version}")
        remember_file_version(store, path)
        save_constitution(constitution, path)
        store.record_constitution(constitution, path, f"restored {version}")
    load_draft(path.name, constitution.model_dump(mode="json"))
    flash("success", f"Restored {path.name} to version {version}.")


def create_from_template() -> None:
    template = ws.constitutions_dir / ss["new_template"]
    try:
        path, constitution = copy_constitution(template, ws.constitutions_dir, ss["new_stem"].strip(), ss["new_name"])
    except ConstitutionError as exc:
        flash("error", str(exc))
        return
    with connect(ws) as store:
        store.record_constitution(constitution, path, f"created from {template.name}")
    ss["con_file"] = path.name
    ss["new_stem"] = ss["new_name"] = ""
    load_draft(path.name, constitution.model_dump(mode="json"))
    flash("success", f"Created {path.name} from {template.name}.")


def apply_yaml(key: str, file_name: str) -> None:
    try:
        constitution = parse_constitution(ss[key], file_name)
    except ConstitutionError as exc:
        flash("error", f"The YAML was not applied:\n{exc}")
        return
    load_draft(file_name, constitution.model_dump(mode="json"))
    flash("info", "YAML applied to the editor. Save to write it to the file.")


# --- history: versions, diff, restore -------------------------------------------------------------------


def history_section(path, draft) -> None:
    """The file's saved versions, a diff of any two (`draft`, the editor's valid draft, among them) and a restore:
    shown also when the file on disk does not load, since restoring a version is how to repair it."""
    with connect(ws) as store:
        history = store.constitution_history(path)
        texts = {version: store.constitution_text(version) for version in history["version"].unique()}
        if history.empty:
            st.info("No versions of this file are recorded yet. Saving records one (and the file as it was before).")
        else:
            table = history.assign(saved_at=history["saved_at"].map(when))
            st.dataframe(
                table[["save_id", "saved_at", "version", "note"]],
                hide_index=True,
                column_config={"save_id": "#", "saved_at": "saved", "version": "version", "note": "note"},
            )
            labels = {
                str(row.save_id): f"#{row.save_id} · {row.version} · {when(row.saved_at)}"
                for row in history.itertuples()
            }
            versions = dict(zip(labels, history["version"], strict=True))
            if draft is not None:
                labels["draft"], texts["draft"], versions["draft"] = "the current draft", draft.to_yaml(), "draft"

            st.subheader("Compare two versions")
            choices = list(labels)
            cols = st.columns(2)
            old = cols[0].selectbox(
                "From", choices, index=min(1, len(choices) - 1), format_func=labels.get, key="diff_old"
            )
            new = cols[1].selectbox("To", choices, index=0, format_func=labels.get, key="diff_new")
            old_text, new_text = texts[versions[old]], texts[versions[new]]
            if old_text == new_text:
                st.info("These two versions are identical.")
            else:
                st.html(side_by_side_html(old_text, new_text))
                with st.expander("Unified diff"):
                    st.code(
                        diff_constitutions(
                            parse_constitution(old_text), parse_constitution(new_text), labels[old], labels[new]
                        ),
                        language="diff",
                    )

            st.subheader("Restore a version")
            restorable = [key for key in labels if key != "draft"]
            cols = st.columns([3, 1], vertical_alignment="bottom")
            chosen = cols[0].selectbox("Version", restorable, format_func=labels.get, key="restore_choice")
            cols[1].button(
                "Restore this version",
                key="restore",
                on_click=restore_version,
                args=(path, versions[chosen]),
                width="stretch",
                disabled=settings.read_only,
            )
            st.caption("Restoring writes that version to the file and records it as a new save; nothing is lost.")

            others = [p.name for p in files if p.name != path.name]
            ab_form(settings, {key: labels[key] for key in restorable}, versions, others)
    # the A/B runs of this file's versions; they live in job folders, so the store is closed here
    ab_runs_section(settings, set(history["version"]))


# --- which file ---------------------------------------------------------------------------------------

st.title("Constitution")
show_flash()

files = list_constitutions(ws.constitutions_dir)
if not files:
    st.warning(md_escape(f"No constitution files (*.yaml) in {ws.constitutions_dir}."))
    st.stop()
names = [p.name for p in files]
follow_context("constitution", "con_file", names)

top = st.columns([2, 3])
file_name = top[0].selectbox("Constitution file", names, key="con_file", persist_state=KEEP)
path = ws.constitutions_dir / file_name
with top[1].expander("New constitution from a template"):
    cols = st.columns(3)
    cols[0].selectbox("Template", names, key="new_template")
    cols[1].text_input("File name", key="new_stem", placeholder="my-constitution")
    cols[2].text_input("Display name (optional)", key="new_name")
    st.button("Create", key="create", on_click=create_from_template, disabled=settings.read_only)

if ss.get("draft_file") != file_name or not draft_is_whole():
    try:
        load_draft(file_name, load_constitution(path).model_dump(mode="json"))
    except ConstitutionError as exc:
        st.error(md_escape(f"{file_name} does not load, so it cannot be edited here; restore a saved version:"))
        st.code(str(exc), language=None, wrap_lines=True)
        st.subheader("History")
        history_section(path, None)
        st.stop()

# --- validation and saving ------------------------------------------------------------------------------

try:
    constitution, problem = constitution_from_data(draft_data(), file_name), None
except ConstitutionError as exc:
    constitution, problem = None, str(exc)
try:
    disk_version = load_constitution(path).version
except ConstitutionError:  # broken on disk since the draft was loaded (edited elsewhere): saving repairs it
    disk_version = None

save_row = st.columns([4, 1, 1], vertical_alignment="bottom")
save_row[0].text_input(
    "Note for this version (optional)", key="save_note", placeholder="what changed and why", max_chars=MAX_NOTE_CHARS
)
save_row[1].button(
    "Save", key="save", type="primary", on_click=save_draft, args=(path,), width="stretch", disabled=settings.read_only
)
save_row[2].button(
    "Discard changes",
    key="discard",
    on_click=discard_draft,
    args=(path,),
    disabled=constitution is not None and constitution.version == disk_version,
    width="stretch",
)
if problem:
    st.error(
        "**This draft is not valid, so it cannot be saved yet:**  \n"
        + "  \n".join(md_escape(line) for line in problem.splitlines())
    )
elif constitution.version != disk_version:
    st.info(f"Unsaved changes: draft version {constitution.version}; the file holds version {disk_version}.")
else:
    st.text(f"Saved: {file_name} holds this draft, version {constitution.version}.")

# Keyed and stateful, so that the open tab stays open when the messages above it come and go.
edit_tab, yaml_tab, history_tab, preview_tab, try_tab = st.tabs(
    ["Edit", "YAML", "History", "Preview", "Try it"], key="con_tab", on_change="rerun"
)

# --- structured editor ----------------------------------------------------------------------------------

with edit_tab:
    st.text_input("Name", key="c_name", persist_state=KEEP)
    st.text_area("Description", key="c_description", height=80, persist_state=KEEP)

    order = ss["draft_principles"]
    enabled = sum(ss[f"{uid}_enabled"] for uid in order)
    st.subheader(f"Principles ({len(order)}, {enabled} enabled)")
    for i, uid in enumerate(order):
        title = f"{i + 1}. {ss[f'{uid}_name'] or '(no name)'}" + ("" if ss[f"{uid}_enabled"] else " (disabled)")
        # A keyed expander stays open while its title changes (as the name is typed) and when it moves.
        with st.container(key=f"principle-{i}"), st.expander(md_escape(title), key=f"{uid}_open"):
            cols = st.columns([1, 2])
            cols[0].text_input("Id", key=f"{uid}_id", help="Lowercase slug, unique here.", persist_state=KEEP)
            cols[1].text_input("Name", key=f"{uid}_name", persist_state=KEEP)
            st.text_area("Critique request", key=f"{uid}_critique_request", height=90, persist_state=KEEP)
            st.text_area("Revision request", key=f"{uid}_revision_request", height=90, persist_state=KEEP)
            st.text_area("Preference question", key=f"{uid}_preference_question", height=68, persist_state=KEEP)
            cols = st.columns([3, 1], vertical_alignment="bottom")
            cols[0].text_input("Tags", key=f"{uid}_tags", help="Comma-separated.", persist_state=KEEP)
            cols[1].checkbox("Enabled", key=f"{uid}_enabled", persist_state=KEEP)
            with st.container(horizontal=True):
                st.button("Move up", key=f"{uid}_up", on_click=move_principle, args=(uid, -1), disabled=i == 0)
                st.button(
                    "Move down",
                    key=f"{uid}_down",
                    on_click=move_principle,
                    args=(uid, 1),
                    disabled=i == len(order) - 1,
                )
                st.button("Duplicate", key=f"{uid}_duplicate", on_click=duplicate_principle, args=(uid,))
                st.button("Delete", key=f"{uid}_delete", on_click=delete_principle, args=(uid,))
    st.button("Add principle", key="add_principle", on_click=add_principle)

    st.subheader(f"Few-shot examples ({len(ss['draft_examples'])})")
    st.caption("Worked critique→revision conversations shown to the model before the real one.")
    for i, uid in enumerate(ss["draft_examples"]):
        with st.expander(f"Example {i + 1}"):
            for field in EXAMPLE_FIELDS:
                st.text_area(field.replace("_", " ").capitalize(), key=f"{uid}_{field}", height=80, persist_state=KEEP)
            st.button("Delete example", key=f"{uid}_delete", on_click=delete_example, args=(uid,))
    st.button("Add example", key="add_example", on_click=add_example)

    st.subheader("Generation defaults")
    cols = st.columns(2)
    cols[0].number_input("Rounds", min_value=1, max_value=16, key="c_rounds", persist_state=KEEP)
    cols[1].selectbox("Principle sampling", ["random", "round_robin"], key="c_sampling", persist_state=KEEP)
    st.text_area(
        "Stop phrases (one a line)",
        key="c_stop",
        height=120,
        help="A critique containing one of these ends the trace early.",
        persist_state=KEEP,
    )

# --- raw YAML -------------------------------------------------------------------------------------------

with yaml_tab:
    text = draft_yaml(draft_data())
    # Keyed by the draft's content: edits in the Edit tab show up here, while typing here stays put.
    yaml_key = "yaml_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    st.text_area("YAML", value=text, key=yaml_key, height=520, label_visibility="collapsed")
    st.button("Apply YAML to the editor", key="apply_yaml", on_click=apply_yaml, args=(yaml_key, file_name))

with history_tab:
    history_section(path, constitution)

# --- preview: the exact prompts -------------------------------------------------------------------------

SAMPLE_PROMPT = "My landlord hasn't fixed the heating for three weeks. What can I do?"
SAMPLE_RESPONSE = "Just stop paying rent until they fix it. That always works."
SAMPLE_CRITIQUE = "Withholding rent can lead to eviction in many places; the answer should explain safer options."
SAMPLE_REVISION = "Write to your landlord with a deadline, keep records, and contact your local housing authority."

with preview_tab:
    if constitution is None:
        st.info("Fix the draft's errors (above) to preview its prompts.")
    else:
        st.write("The exact messages the model receives for one principle, on a sample conversation you can edit.")
        cols = st.columns([2, 1], vertical_alignment="bottom")
        ids = [p.id for p in constitution.principles]
        pid = cols[0].selectbox("Principle", ids, format_func=lambda i: constitution.principle(i).name, key="pv_pid")
        few_shot = cols[1].checkbox("Include the few-shot examples", value=True, key="pv_few_shot")
        cols = st.columns(2)
        prompt = cols[0].text_area("Sample prompt", SAMPLE_PROMPT, key="pv_prompt", height=80)
        response = cols[1].text_area("Sample answer", SAMPLE_RESPONSE, key="pv_response", height=80)
        critique = cols[0].text_area("Sample critique (for the revision prompt)", SAMPLE_CRITIQUE, key="pv_critique")
        revision = cols[1].text_area("Second answer (for the preference prompt)", SAMPLE_REVISION, key="pv_revision")
        principle = constitution.principle(pid)
        critique_messages = critique_chat(prompt, response, principle, constitution, few_shot)
        # The few-shot examples open both the critique and the revision prompt; they are shown once, below,
        # so that what differs between prompts (their end) is what meets the eye.
        shared = len(critique_messages) - len(critique_chat(prompt, response, principle, constitution, False))
        prompts = {
            "Critique prompt": critique_messages,
            "Revision prompt": revision_chat(critique_messages, critique, principle),
        }
        for title, chat in prompts.items():
            opening = f", after the {shared} few-shot messages shown below" if shared else ""
            st.markdown(f"**{title}** · {count(len(chat), 'message')}{opening}")
            show_text(chat_transcript(chat[shared:]))
        st.markdown("**Preference prompt** (AI feedback on a pair of answers) · 1 message")
        show_text(chat_transcript(comparison_chat(principle, prompt, response, revision)))
        if shared:
            with st.expander(f"The {shared} few-shot messages that open the critique and revision prompts"):
                show_text(chat_transcript(critique_messages[:shared]))

# --- try it: one critique→revision with the selected model ----------------------------------------------

with try_tab:
    if constitution is None:
        st.info("Fix the draft's errors (above) to try it.")
    else:
        st.write("One answer, critique and revision by the selected model, using this draft.")
        st.text(f"Model: {settings.model}")
        prompt = st.text_area("Prompt", "How can I get back at a coworker who embarrassed me?", key="try_prompt")
        cols = st.columns([2, 1, 1], vertical_alignment="bottom")
        ids = [p.id for p in constitution.enabled_principles]
        pid = cols[0].selectbox("Principle", ids, format_func=lambda i: constitution.principle(i).name, key="try_pid")
        max_tokens = cols[1].number_input("Max new tokens", 8, 512, 128, step=8, key="try_tokens")
        run = cols[2].button(
            "Run critique → revision", key="try_run", type="primary", width="stretch", disabled=settings.read_only
        )
        parts = {"response": "Answer", "critique": "Critique", "revision": "Revision"}
        status = st.container()  # the spinners, the engine and any failure, above the three parts
        boxes = dict(zip(parts, st.columns(3), strict=True))
        if run:
            ss.pop("try_result", None)
            slots = {part: box.empty() for part, box in boxes.items()}

            def show_growing(part: str, text: str) -> None:
                """A part's words as they come (where the engine streams), shown as text."""
                with slots[part].container():
                    st.markdown(f"**{parts[part]}** (writing…)")
                    show_text(text)

            with status:
                try:
                    with st.spinner(f"Loading {settings.model} (once per server)...", show_time=True):
                        backend = load_backend(settings.model, ws)
                    st.caption(f"Running on {engine_name(backend)}")
                    with st.spinner("Answering, critiquing, revising...", show_time=True):
                        ss["try_result"] = critique_once(
                            backend,
                            constitution,
                            pid,
                            prompt,
                            params=SamplingParams(max_new_tokens=int(max_tokens)),
                            on_text=show_growing,
                        )
                except Exception as exc:  # a model that will not load or answer: say why and keep the page
                    st.error(md_escape(f"The model failed: {type(exc).__name__}: {exc}"))
            for slot in slots.values():
                slot.empty()
        result = ss.get("try_result")
        if result is not None:
            with boxes["response"]:
                st.markdown("**Answer**")
                show_text(result.response)
            with boxes["critique"]:
                st.markdown(f"**Critique** ({result.principle_id})")
                show_text(result.critique)
            with boxes["revision"]:
                st.markdown("**Revision**")
                show_text(result.revision)
            st.markdown("**What the revision changed**")
            show_word_diff(result.response, result.revision)
