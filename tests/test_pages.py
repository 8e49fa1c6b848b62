"""The app's pages under Streamlit's AppTest: widgets, saving, the validation error, verdicts stored, runs launched.

Each test points the app at its own data folder and a copy of the shipped constitutions (through the
environment, as `cai app` does), with records spooled into a job folder the way a real job writes them.
"""

from __future__ import annotations

import json
import os

import pytest
from streamlit.testing.v1 import AppTest

from cai_core import cli
from cai_core.auth import IDENTITY_HEADER, IDENTITY_KEY_ENV, Actor, sign_identity
from cai_core.constitution import list_constitutions, load_constitution
from cai_core.jobs import JobFolder
from cai_core.prompts import load_prompts
from cai_core.records import Trace, TraceStep, to_row
from cai_core.store import Store, TraceFilter
from cai_core.workspace import PROJECT_ROOT
from ui.settings import OTHER_MODEL, SETTINGS
from ui.text import diff_html, side_by_side_html

from .app_pages import open_page
from .browser.seed import DOG_ROUNDS, FOUR_ROUNDS, HOSTILE, IMAGE, SCRIPT, model_in_workspace

CONSTITUTION = "pages/1_Constitution.py"
TRACES = "pages/2_Traces.py"
GENERATE = "pages/3_Generate.py"


def texts(elements) -> str:
    """The elements' text as the user reads it (messages escape markdown with backslashes, and break links
    with zero-width spaces)."""
    return "\n".join(str(e.value) for e in elements).replace("\\", "").replace("\u200b", "")


def type_model(at: AppTest, spec: str) -> None:
    """A model the sidebar does not list: picked as "other…", then typed."""
    at.selectbox(key="model_choice").set_value(OTHER_MODEL).run()
    at.text_input(key="model_spec").set_value(spec).run()


# --- home and shared settings ---------------------------------------------------------------------------


def test_home_shows_counts_and_ingests_spooled_records(ws, tmp_path):
    at = open_page()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {
        "Constitution files": str(len(list_constitutions(tmp_path / "constitutions"))),
        "Demo prompts": str(len(load_prompts(ws.demo_prompts).prompts)),
        "Runs": "1",
        "Traces": "2",
        "Constitution versions": "1",
    }


def test_settings_are_shared_by_every_page(ws, tmp_path):
    (ws.root / "endpoints.yaml").write_text("endpoints:\n  - name: lab\n    urls: [http://127.0.0.1:9]\n")
    at = open_page()
    assert at.selectbox(key="model_choice").value == "default"
    assert "model_spec" not in [t.key for t in at.text_input]  # the free text only once "other…" is picked
    type_model(at, "openai:some-model@http://127.0.0.1:9")
    at.text_input(key="data_dir").set_value(str(ws.root / "elsewhere")).run()
    assert {m.label: m.value for m in at.metric}["Traces"] == "0"
    at.switch_page(GENERATE).run()
    assert at.selectbox(key="model_choice").value == OTHER_MODEL
    assert at.text_input(key="model_spec").value == "openai:some-model@http://127.0.0.1:9"
    assert "No runs yet." in texts(at.caption)
    assert (ws.root / "elsewhere" / "cai.duckdb").exists()


def test_the_sidebar_creates_no_file_outside_the_workspace(ws, tmp_path):
    """A database named zz.pth in site-packages would run at every start of the project's Python."""
    at = open_page()
    outside = tmp_path / "site-packages"
    at.text_input(key="db_path").set_value(str(outside / "zz.pth")).run()
    assert "outside the workspace" in texts(at.error) and not at.metric
    at.text_input(key="db_path").set_value(str(ws.root / "zz.pth")).run()
    assert "expected a .duckdb file" in texts(at.error)
    at.text_input(key="db_path").set_value("").run()
    at.text_input(key="data_dir").set_value(str(outside)).run()
    assert "outside the workspace" in texts(at.error)
    at.text_input(key="data_dir").set_value(str(ws.root / ".." / "site-packages")).run()
    assert "outside the workspace" in texts(at.error)
    assert not outside.exists() and not (ws.root / "zz.pth").exists()


def test_the_sidebar_sends_no_key_to_a_url_the_operator_did_not_list(ws, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    at = open_page(GENERATE)
    type_model(at, "openai:gpt@http://attacker.example/v1")
    assert "http://attacker.example/v1 is not a listed endpoint" in texts(at.error)
    assert not at.get("form")  # nothing on the page runs with it


# --- login (`cai app --host ...`) ------------------------------------------------------------------------


@pytest.fixture
def behind_the_front_door(monkeypatch):
    """The environment `cai app --host 0.0.0.0` gives the pages, and `as_visitor(actor)` to choose whose signed
    identity the front door put in the request's headers (None: a request that did not pass it)."""
    monkeypatch.setenv(IDENTITY_KEY_ENV, "pages-test-key")
    headers: dict[str, str] = {}
    monkeypatch.setattr("ui.settings.request_headers", lambda: headers)

    def as_visitor(actor: Actor | None, key: str = "pages-test-key") -> None:
        headers.clear()
        if actor:
            headers[IDENTITY_HEADER] = sign_identity(actor, key)

    return as_visitor


def shows_nothing(at: AppTest) -> bool:
    return "Not logged in" in texts(at.error) and not at.sidebar.children and not at.metric and not at.title


def test_behind_the_front_door_a_page_shows_nothing_without_a_signed_identity(ws, behind_the_front_door):
    behind_the_front_door(None)  # Streamlit reached directly, on its internal port
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=30).run()
    assert shows_nothing(at)
    behind_the_front_door(Actor("olive", "operator"), key="a forged key")
    at.switch_page(TRACES).run()
    assert shows_nothing(at) and not at.dataframe and not at.code


def test_the_login_names_the_annotator_and_an_annotator_may_not_switch_the_data_folder(ws, behind_the_front_door):
    behind_the_front_door(Actor("ada", "annotator"))
    at = open_page(TRACES)
    assert [t.value for t in at.title] == ["Traces"]
    assert "Logged in as ada (annotator)" in texts(at.sidebar.text)
    assert at.sidebar.text_input(key="data_dir").disabled
    # the login names the annotator: no name to type, and the verdict is filed under it
    at.radio(key="trace_step").set_value(3).run()
    assert "annotator" not in [t.key for t in at.text_input]
    next(r for r in at.radio if r.key != "trace_step").set_value("better")
    at.button(key="save_verdict").click().run()
    with Store.open(ws) as store:
        assert [(v.annotator, v.revision_verdict) for v in store.verdicts(FOUR_ROUNDS)] == [("ada", "better")]
    at.switch_page("pages/5_Annotate.py").run()
    assert "annotator" not in [t.key for t in at.text_input]
    assert "Labelled by you" in [m.label for m in at.metric]  # ada's queue, with no name typed
    other = ws.root / "elsewhere"
    other.mkdir()
    # past the disabled widget, as a hand-made message on the stream could
    at.session_state[SETTINGS] = {**at.session_state[SETTINGS], "data_dir": str(other)}
    at.run()
    assert "switch the data folder or database: operators only" in texts(at.error)
    assert not (other / "cai.duckdb").exists()


def test_a_server_started_by_hand_on_all_interfaces_shows_nothing(ws):
    """`streamlit run app.py --server.address 0.0.0.0` bypasses `cai app`'s login: the pages refuse to draw."""
    from streamlit import config

    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=30).run()
    finally:
        config.set_option("server.address", None)
    assert "start it with `cai app --host 0.0.0.0`" in texts(at.error) and not at.metric and not at.sidebar.children


# --- constitution page ----------------------------------------------------------------------------------


def open_constitution(file_name: str) -> AppTest:
    at = open_page(CONSTITUTION)
    at.selectbox(key="con_file").set_value(file_name).run()
    assert not at.exception, at.exception
    return at


def principle_key(at: AppTest, index: int, field: str) -> str:
    return f"{at.session_state['draft_principles'][index]}_{field}"


def test_edit_and_save_writes_the_file_and_records_a_version(ws, tmp_path):
    path = tmp_path / "constitutions" / "hhh.yaml"
    original = load_constitution(path)
    at = open_constitution("hhh.yaml")
    at.text_input(key=principle_key(at, 0, "name")).set_value("Avoid serious harm").run()
    assert "Unsaved changes" in texts(at.info)
    at.text_input(key="save_note").set_value("clearer name").run()
    at.button(key="save").click().run()

    saved = load_constitution(path)
    assert saved.principles[0].name == "Avoid serious harm"
    assert [p.id for p in saved.principles] == [p.id for p in original.principles]
    assert f"version {saved.version}" in texts(at.success)
    with Store.open(ws) as store:
        history = store.constitution_history(path)
    # the file as it was is kept first, so the first save can be diffed and undone
    assert list(history["note"]) == ["clearer name", "as found on disk"]
    assert list(history["version"]) == [saved.version, original.version]


def test_an_unsaved_draft_survives_a_visit_to_another_page(ws):
    at = open_constitution("red_team.yaml")
    key = principle_key(at, 0, "name")
    at.text_input(key=key).set_value("Still being written").run()
    at.switch_page(TRACES).run()
    at.switch_page(CONSTITUTION).run()
    assert at.selectbox(key="con_file").value == "red_team.yaml"
    assert at.text_input(key=key).value == "Still being written"
    assert "Unsaved changes" in texts(at.info)


def test_invalid_edit_shows_the_error_and_leaves_the_file_alone(ws, tmp_path):
    path = tmp_path / "constitutions" / "hhh.yaml"
    before = path.read_bytes()
    at = open_constitution("hhh.yaml")
    at.text_input(key=principle_key(at, 1, "id")).set_value("Not A Slug").run()
    assert "principle 2 ('Not A Slug'), field 'id'" in texts(at.error)
    at.button(key="save").click().run()
    assert "Not saved, the file is unchanged" in texts(at.error)
    assert path.read_bytes() == before
    with Store.open(ws) as store:
        assert store.constitution_history(path).empty


def test_principles_can_be_added_duplicated_moved_and_deleted(ws, tmp_path):
    at = open_constitution("customer_service.yaml")
    ids = [p.id for p in load_constitution(tmp_path / "constitutions" / "customer_service.yaml").principles]
    first = at.session_state["draft_principles"][0]
    at.button(key=f"{first}_duplicate").click().run()
    at.button(key=f"{first}_down").click().run()
    at.button(key=f"{at.session_state['draft_principles'][-1]}_delete").click().run()
    at.button(key="add_principle").click().run()
    # a new principle has empty requests: the draft is invalid until they are written
    assert "field 'critique_request'" in texts(at.error)
    for field in ("critique_request", "revision_request", "preference_question"):
        at.text_area(key=principle_key(at, -1, field)).set_value(f"A {field} for the new principle.").run()
    at.checkbox(key=principle_key(at, -1, "enabled")).uncheck().run()
    at.button(key="save").click().run()

    saved = load_constitution(tmp_path / "constitutions" / "customer_service.yaml")
    expected = [f"{ids[0]}-copy", ids[0], *ids[1:-1], "new-principle"]
    assert [p.id for p in saved.principles] == expected
    assert saved.principle(f"{ids[0]}-copy").name.endswith("(copy)")
    assert not saved.principle("new-principle").enabled


def test_few_shot_examples_and_generation_defaults_are_editable(ws, tmp_path):
    at = open_constitution("hhh.yaml")
    first_example = at.session_state["draft_examples"][0]
    at.button(key=f"{first_example}_delete").click().run()
    at.number_input(key="c_rounds").set_value(2).run()
    at.selectbox(key="c_sampling").set_value("round_robin").run()
    at.text_area(key="c_stop").set_value("no changes needed\n\nall good\n").run()
    at.button(key="save").click().run()
    saved = load_constitution(tmp_path / "constitutions" / "hhh.yaml")
    assert len(saved.few_shot_examples) == 1
    assert (saved.generation.rounds, saved.generation.principle_sampling) == (2, "round_robin")
    assert saved.generation.stop_phrases == ["no changes needed", "all good"]


def test_raw_yaml_errors_name_the_line_and_valid_yaml_reaches_the_editor(ws, tmp_path):
    path = tmp_path / "constitutions" / "red_team.yaml"
    before = path.read_bytes()
    at = open_constitution("red_team.yaml")
    yaml_area = next(t for t in at.text_area if t.key.startswith("yaml_"))
    yaml_area.set_value(yaml_area.value.replace("principles:", "principles: [", 1))
    at.button(key="apply_yaml").click().run()
    assert "line" in texts(at.error) and "malformed YAML" in texts(at.error)
    assert path.read_bytes() == before

    # the broken text stays in the box to be fixed
    yaml_area = next(t for t in at.text_area if t.key.startswith("yaml_"))
    assert "principles: [" in yaml_area.value
    yaml_area.set_value(
        yaml_area.value.replace("principles: [", "principles:", 1).replace("name: ", "name: Renamed", 1)
    )
    at.button(key="apply_yaml").click().run()
    assert at.text_input(key="c_name").value.startswith("Renamed")
    assert path.read_bytes() == before  # applied to the draft only, until Save


def test_new_constitution_from_a_template(ws, tmp_path):
    at = open_page(CONSTITUTION)
    at.selectbox(key="new_template").set_value("red_team.yaml")
    at.text_input(key="new_stem").set_value("Bad Name")
    at.button(key="create").click().run()
    assert "file name 'Bad Name'" in texts(at.error)
    at.text_input(key="new_stem").set_value("my-team")
    at.text_input(key="new_name").set_value("My team's rules")
    at.button(key="create").click().run()
    created = tmp_path / "constitutions" / "my-team.yaml"
    assert load_constitution(created).name == "My team's rules"
    assert at.selectbox(key="con_file").value == "my-team.yaml"
    assert at.text_input(key="c_name").value == "My team's rules"
    with Store.open(ws) as store:
        assert list(store.constitution_history(created)["note"]) == ["created from red_team.yaml"]


def test_history_diffs_two_versions_and_restores_one(ws, tmp_path):
    path = tmp_path / "constitutions" / "hhh.yaml"
    original = load_constitution(path)
    at = open_constitution("hhh.yaml")
    at.text_area(key=principle_key(at, 0, "critique_request")).set_value("Is anything <b>harmful</b> here?").run()
    at.button(key="save").click().run()

    # newest save against the one before it: the side-by-side diff shows the change, escaped
    diffs = [h.value for h in at.get("html") if "side-by-side" in h.value]
    assert len(diffs) == 1 and "Is anything &lt;b&gt;harmful&lt;/b&gt; here?" in diffs[0]
    assert "<b>" not in diffs[0]
    assert "+  critique_request: Is anything <b>harmful</b> here?" in texts(at.code)

    with Store.open(ws) as store:
        first_save = str(store.constitution_history(path)["save_id"].iloc[-1])
    at.selectbox(key="restore_choice").set_value(first_save).run()
    at.button(key="restore").click().run()
    assert load_constitution(path).version == original.version
    assert f"Restored hhh.yaml to version {original.version}" in texts(at.success)
    with Store.open(ws) as store:
        assert store.constitution_history(path)["note"].iloc[0] == f"restored {original.version}"


def test_preview_shows_the_exact_prompts(ws, tmp_path):
    constitution = load_constitution(tmp_path / "constitutions" / "hhh.yaml")
    principle = constitution.principle("honesty")
    at = open_constitution("hhh.yaml")
    at.selectbox(key="pv_pid").set_value("honesty").run()
    assert constitution.few_shot_examples[0].critique in texts(at.code)
    at.checkbox(key="pv_few_shot").uncheck().run()
    at.text_area(key="pv_prompt").set_value("Is the moon made of cheese?").run()
    shown = texts(at.code)
    assert "[user]\nIs the moon made of cheese?\n\n[assistant]\n" in shown
    assert principle.critique_request in shown and principle.revision_request in shown
    assert principle.preference_question in shown
    assert constitution.few_shot_examples[0].critique not in shown


def test_try_it_runs_one_critique_and_revision(ws, tiny_model_path):
    at = open_constitution("hhh.yaml")
    type_model(at, model_in_workspace(tiny_model_path, ws))
    at.number_input(key="try_tokens").set_value(8).run()
    at.button(key="try_run").click().run()
    assert not at.error, texts(at.error)
    result = at.session_state["try_result"]
    assert result.prompt == at.text_area(key="try_prompt").value
    assert result.principle_id == at.selectbox(key="try_pid").value
    assert result.revision in texts(at.code)


# --- traces page ----------------------------------------------------------------------------------------


def test_stepping_through_a_four_round_trace(ws):
    at = open_page(TRACES)
    assert at.selectbox(key="trace_id").value == FOUR_ROUNDS  # the newest trace opens first
    labels = at.radio(key="trace_step").options
    assert labels[:4] == ["Prompt", "Answer", "Critique 1", "Revision 1"] and labels[-1] == "Revision 4"
    assert DOG_ROUNDS[0][2] not in texts(at.code)
    at.button(key="step_next").click().run()
    assert DOG_ROUNDS[0][2] in texts(at.code)
    at.radio(key="trace_step").set_value(3).run()  # revision 1 rewrites the answer: side by side, not a word diff
    assert not at.get("html") and DOG_ROUNDS[0][2] in texts(at.code) and DOG_ROUNDS[1][2] in texts(at.code)
    assert not [w for w in at.warning if "Flagged" in str(w.value)]  # a healthy revision has no flags
    at.radio(key="trace_step").set_value(1).run()
    for _ in range(8):
        at.button(key="step_next").click().run()
    assert at.radio(key="trace_step").value == 9 and at.button(key="step_next").disabled
    principle, _, revision = DOG_ROUNDS[4]
    assert f"({principle})" in texts(at.text)
    [diff] = at.get("html")
    assert "<ins" in diff.value and "Earplugs" in diff.value
    assert revision in texts(at.code)
    at.button(key="step_previous").click().run()
    assert DOG_ROUNDS[4][1] in texts(at.code)  # critique 4


def test_verdicts_are_stored_edited_and_counted(ws):
    at = open_page(TRACES)
    at.radio(key="trace_step").set_value(3).run()  # revision 1
    assert "Type your name to judge this round" in texts(at.info)
    assert not [b for b in at.get("button") if b.key == "save_verdict"]  # no form to fill before the name

    at.text_input(key="annotator").set_value("ada").run()
    at.button(key="save_verdict").click().run()  # nothing chosen: refused, not stored as NULL/NULL
    assert "Not saved: judge the revision or the critique" in texts(at.error) and not at.success
    with Store.open(ws) as store:
        assert store.verdicts(FOUR_ROUNDS) == [] and store.verdict_counts().empty
    radios = [r for r in at.radio if r.key != "trace_step"]
    radios[0].set_value("better")
    radios[1].set_value("valid")
    at.text_area(key=next(t.key for t in at.text_area if t.key.endswith("_note"))).set_value("Refuses the harm.")
    at.button(key="save_verdict").click().run()
    assert "Saved your verdict on round 1." in texts(at.success)
    with Store.open(ws) as store:
        [verdict] = store.verdicts(FOUR_ROUNDS)
    assert (verdict.round, verdict.annotator, verdict.revision_verdict, verdict.critique_verdict, verdict.note) == (
        1,
        "ada",
        "better",
        "valid",
        "Refuses the harm.",
    )
    assert {m.label: m.value for m in at.metric} == {"Critique: valid": "1", "Revision: better": "1"}
    assert not at.get("download_button")[0].disabled

    # a fresh session shows the stored verdict, and saving again edits it rather than adding one
    at = open_page(TRACES)
    at.radio(key="trace_step").set_value(3).run()
    at.text_input(key="annotator").set_value("ada").run()
    radios = [r for r in at.radio if r.key != "trace_step"]
    assert (radios[0].value, radios[1].value) == ("better", "valid")
    radios[0].set_value("worse")
    at.button(key="save_verdict").click().run()
    with Store.open(ws) as store:
        assert [(v.revision_verdict, v.critique_verdict) for v in store.verdicts(FOUR_ROUNDS)] == [("worse", "valid")]


def test_filters_and_search(ws):
    at = open_page(TRACES)
    at.selectbox(key="filter_principle_id").set_value("clarity").run()
    assert len(at.selectbox(key="trace_id").options) == 1
    assert at.selectbox(key="trace_id").value == FOUR_ROUNDS
    at.selectbox(key="filter_principle_id").set_value("(any)").run()
    at.text_input(key="filter_text").set_value("onerror").run()
    assert at.selectbox(key="trace_id").value == HOSTILE
    at.text_input(key="filter_text").set_value("no such words anywhere").run()
    assert "No traces match" in texts(at.info)


def test_pages_of_the_list_come_from_the_database(ws):
    job = JobFolder.create(ws.runs_dir, "many", {"kind": "generate", "model": "m", "config": {}})
    traces = [
        Trace(f"many:{i}", "many", f"p{i}", f"prompt number {i}", "", 0, "m", "c", "v", 100.0 + i) for i in range(45)
    ]
    job.append("traces", [to_row(t) for t in traces])
    job.append("trace_steps", [to_row(TraceStep(t.trace_id, 0, None, None, "answer", 1, 0, 1, 0.1)) for t in traces])
    at = open_page(TRACES)
    at.selectbox(key="filter_run_id").set_value("many").run()
    assert "45 traces match" in texts(at.caption)
    assert at.number_input(key="traces_page").max == 3
    at.number_input(key="traces_page").set_value(3).run()
    assert at.selectbox(key="trace_id").options == [f"prompt number {i}" for i in (4, 3, 2, 1, 0)]


@pytest.mark.slow
def test_the_list_reads_one_page_of_100000_traces(ws):
    """The page pages through DuckDB: with 100,000 stored traces it counts them all and draws one page of 20.
    How fast that is, `benchmarks/bench_pages.py --traces 100000` measures (a timed assert here would only be
    a test of how busy the machine is)."""
    job = JobFolder.create(ws.runs_dir, "big", {"kind": "generate", "model": "m", "config": {}})
    n = 100_000
    job.append(
        "traces", [to_row(Trace(f"big:{i}", "big", f"p{i}", f"prompt {i}", "", 0, "m", "c", "v", i)) for i in range(n)]
    )
    job.append("trace_steps", [to_row(TraceStep(f"big:{i}", 0, None, None, "answer", 1, 0, 1, 0.1)) for i in range(n)])
    at = open_page()  # the first run ingests the spooled records
    at.switch_page(TRACES).run()
    at.run()
    assert f"{n + 2} traces match" in texts(at.caption)
    assert len(at.selectbox(key="trace_id").options) == 20


def test_hostile_text_is_shown_as_text(ws):
    at = open_page(TRACES)
    at.selectbox(key="trace_id").set_value(HOSTILE).run()
    assert f"{SCRIPT} Tell me about {IMAGE}" in texts(at.code)
    at.radio(key="trace_step").set_value(3).run()  # revision 1: the only HTML on the page is the escaped diff
    [diff] = at.get("html")
    assert "<script" not in diff.value and "<img" not in diff.value and "&lt;img src=x" in diff.value
    for element in (*at.markdown, *at.caption, *at.text):
        assert "<img" not in str(element.value) and "<script" not in str(element.value)


def test_diff_html_escapes_every_piece():
    html = diff_html("a <b>bold</b> & plain", "a <i>new</i> & plain <script>x()</script>")
    assert "<b>" not in html and "<i>" not in html and "<script>" not in html
    assert "&lt;script&gt;" in html and "&amp;" in html
    table = side_by_side_html("x: <img src=x>\n", "x: <svg onload=alert(1)>\n")
    assert "<img" not in table and "<svg" not in table and "&lt;svg onload=alert(1)&gt;" in table


# --- generate page --------------------------------------------------------------------------------------


def test_runs_show_progress_and_stored_traces(ws):
    at = open_page(GENERATE)
    assert "seed-run" in texts(at.text)
    assert any("7/7 steps · 2 traces stored" in str(p.proto.text) for p in at.get("progress"))


def test_launch_starts_the_cli_job_whose_traces_land(ws, tmp_path, tiny_model_path, monkeypatch):
    """The page starts the job as `cai generate --background` does; running that command line here (instead
    of in a detached process) shows the traces reaching the page."""
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    prompts = ws.root / "two.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(2)))

    at = open_page(GENERATE)
    type_model(at, model_in_workspace(tiny_model_path, ws))
    at.text_input(key="gen_prompts").set_value(str(prompts))
    at.selectbox(key="gen_constitution").set_value("hhh.yaml")
    at.number_input(key="gen_rounds").set_value(1)
    at.number_input(key="gen_tokens").set_value(4)
    at.button(key="gen_start").click().run()
    assert not at.error, texts(at.error)
    [argv] = launched
    assert argv[:2] == ["--data-dir", str(ws.root)] and argv[2] == "resume"
    run_id = argv[3]
    assert f"Started {run_id}" in texts(at.success)

    # clicking again while the job is starting must not start it twice
    at.button(key="gen_start").click().run()
    assert len(launched) == 1 and "already running" in texts(at.info)

    assert cli.main(argv) == 0
    at.run()
    assert any(f"{4}/{4} steps · 2 traces stored" in str(p.proto.text) for p in at.get("progress"))
    with Store.open(ws) as store:
        assert store.count_traces(TraceFilter(run_id=run_id)) == 2


def test_cancel_and_resume_buttons(ws, monkeypatch):
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    running = JobFolder.create(ws.runs_dir, "busy", {"kind": "generate", "model": "m", "config": {}})
    running.set_progress("running", 1, 10)  # this process's pid, so it counts as alive
    failed = JobFolder.create(ws.runs_dir, "broken", {"kind": "generate", "model": "m", "config": {}})
    failed.set_progress("failed", 3, 10, "BackendError: out of memory")
    os.utime(running.path)

    at = open_page(GENERATE)
    at.button(key="cancel-busy").click().run()
    assert running.cancel_requested()
    assert "Asked busy to stop" in texts(at.info)
    at.button(key="resume-broken").click().run()
    assert launched == [["--data-dir", str(ws.root), "resume", "broken"]]
    assert "BackendError: out of memory" in [c.value for c in at.code]  # the reason in full, as text
    assert "This run failed" in texts(at.error)


def test_cancel_says_cancelling_at_once_and_cannot_be_clicked_twice(ws):
    job = JobFolder.create(ws.runs_dir, "gen-long", {"kind": "generate", "model": "m", "config": {}})
    job.set_progress("running", 1, 10, unit="step")  # this process stands for the job's: alive, in a long step
    at = open_page(GENERATE)
    at.button(key="cancel-gen-long").click().run()
    assert job.cancel_requested()
    card = texts(at.markdown)
    assert "**cancelling…**" in card and "**running**" not in card
    assert at.button(key="cancel-gen-long").disabled


def test_the_annotators_name_survives_a_visit_to_another_page(ws):
    at = open_page("pages/5_Annotate.py")
    at.text_input(key="annotator").set_value("alice").run()
    at.switch_page("pages/9_Data.py").run()
    at.switch_page("pages/5_Annotate.py").run()
    assert not at.exception, at.exception
    assert at.text_input(key="annotator").value == "alice"
    assert "Type your name to start" not in texts(at.info)
