"""The first hour without the CLI (issue 13, groups 3 and 4) under AppTest: the Data page makes pairs from the
seeded traces, samples pairs in the background, imports uploads and exports what `cai export` writes; the
constitution and prompts chosen on one page are every page's; the sidebar and the home page list the pages in
one order; no page message sends the user to the CLI."""

from __future__ import annotations

import ast
import gzip
import json

from cai_core import cli
from cai_core.exports import ExportFilter, export_bytes, export_rows
from cai_core.jobs import JobFolder
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT
from ui.navigation import HOME, STEPS

from .app_pages import open_page
from .browser.seed import FOUR_ROUNDS, SEED_RUN, model_in_workspace
from .test_pages import CONSTITUTION, GENERATE, texts, type_model

DATA = "pages/9_Data.py"
ANNOTATE = "pages/5_Annotate.py"
AGREEMENT = "pages/6_Agreement.py"
EVALUATE = "pages/7_Evaluate.py"


def stored_pairs(ws, source: str) -> list:
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        return store.pairs(source=source)


# --- group 3: the Data page ------------------------------------------------------------------------------


def test_pairs_from_a_runs_traces_are_made_once(ws):
    at = open_page(DATA)
    at.selectbox(key="slcai_run").set_value(SEED_RUN)
    at.number_input(key="slcai_max_round").set_value(2)
    at.button(key="slcai_make").click().run()
    assert "2 pairs of first answer and revision, 2 new." in texts(at.success)
    pairs = {p.origin: p for p in stored_pairs(ws, "sl-cai")}
    assert set(pairs) == {FOUR_ROUNDS, f"{SEED_RUN}:hostile:0"}
    assert pairs[FOUR_ROUNDS].origin_index == 2  # the revision of round 2, as asked, not the last (round 4)

    at.button(key="slcai_make").click().run()
    assert "2 pairs of first answer and revision, 0 new." in texts(at.success)
    assert len(stored_pairs(ws, "sl-cai")) == 2


def test_sampled_pairs_run_in_the_background_and_land(ws, tiny_model_path, monkeypatch):
    """The page starts the job as `cai pairs sample --background` does; running that command line here (instead
    of in a detached process) shows its progress and its pairs reaching the store."""
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    prompts = ws.root / "three.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(3)))
    at = open_page(DATA)
    type_model(at, model_in_workspace(tiny_model_path, ws))
    at.text_input(key="sample_prompts").set_value(str(prompts))
    at.number_input(key="sample_k").set_value(3)
    at.number_input(key="sample_tokens").set_value(6)
    at.button(key="sample_start").click().run()
    assert not at.error, texts(at.error)
    [argv] = launched
    assert argv[:2] == ["--data-dir", str(ws.root)] and argv[2] == "resume"
    run_id = argv[3]
    assert f"Started {run_id}" in texts(at.success)
    config = JobFolder(ws.runs_dir / run_id).spec["config"]
    assert (config["k"], config["max_new_tokens"], config["prompts"]) == (3, 6, str(prompts))

    at.button(key="sample_start").click().run()  # again while it is starting: it must not run twice
    assert len(launched) == 1 and "already running" in texts(at.info)

    assert cli.main(argv) == 0
    at.run()
    assert any("3/3 prompts" in str(p.proto.text) for p in at.get("progress"))
    assert len(JobFolder(ws.runs_dir / run_id).read("samples")) == 3
    assert {p.origin for p in stored_pairs(ws, "sampled")} <= {run_id}


def test_a_bad_prompt_file_names_its_line_and_starts_nothing(ws):
    prompts = ws.root / "bad.jsonl"
    prompts.write_text('{"prompt": "fine"}\nnot json\n')
    at = open_page(DATA)
    at.text_input(key="sample_prompts").set_value(str(prompts))
    at.button(key="sample_start").click().run()
    assert "bad.jsonl:2" in texts(at.error) and "cai " not in texts(at.error)
    assert not [j for j in ws.runs_dir.iterdir() if JobFolder(j).spec.get("kind") == "pairs"]


def test_uploads_are_imported_from_the_workspace_and_a_path_outside_is_refused(ws, tmp_path):
    pairs = "".join(
        json.dumps({"prompt": f"Q{i}?", "response_a": f"yes {i}", "response_b": f"no {i}"}) + "\n" for i in range(3)
    )
    at = open_page(DATA)
    at.file_uploader(key="import_file_upload").set_value(("mine.jsonl", pairs.encode(), "application/jsonl"))
    at.button(key="import_start").click().run()
    assert "Read 3 pairs from mine.jsonl, 3 new; skipped 0 bad lines." in texts(at.success)
    assert (ws.root / "uploads" / "mine.jsonl").read_text() == pairs  # jobs and imports read files in the workspace
    assert len(stored_pairs(ws, "import")) == 3

    turns = [(f"\n\nHuman: hi {i}\n\nAssistant: kind {i}", f"\n\nHuman: hi {i}\n\nAssistant: rude") for i in range(2)]
    hh = gzip.compress("".join(json.dumps({"chosen": c, "rejected": r}) + "\n" for c, r in turns).encode())
    at.radio(key="import_kind").set_value("auto")
    at.file_uploader(key="import_file_upload").set_value(("hh.jsonl.gz", hh, "application/gzip"))
    at.button(key="import_start").click().run()
    assert "Read 2 pairs (2 new) and imported 2 human labels from hh.jsonl.gz" in texts(at.success)

    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(pairs)
    at.file_uploader(key="import_file_upload").set_value(None)
    at.radio(key="import_kind").set_value("pairs")
    at.text_input(key="import_file").set_value(str(outside))
    at.button(key="import_start").click().run()
    assert "outside the workspace" in texts(at.error)

    # people's labels on stored pairs: pair_id,label lines, one annotator for the whole file
    pair_ids = [p.pair_id for p in stored_pairs(ws, "import")]
    (ws.root / "labels.csv").write_text("pair_id,label\n" + "".join(f"{p},A\n" for p in pair_ids))
    at.radio(key="import_kind").set_value("labels")
    at.text_input(key="import_file").set_value(str(ws.root / "labels.csv"))
    at.text_input(key="import_who").set_value("dee")
    at.button(key="import_start").click().run()
    assert f"imported {len(pair_ids)} human labels" in texts(at.success)
    with Store.open(ws) as store:
        assert {label.pair_id for label in store.human_labels(annotator="dee")} == set(pair_ids)


def test_the_export_is_what_cai_export_writes_with_the_same_filters(ws, tmp_path):
    at = open_page(DATA)
    at.selectbox(key="export_kind").set_value("pairs")
    at.selectbox(key="export_run").set_value(SEED_RUN)
    at.number_input(key="export_max_round").set_value(1).run()
    assert "2 rows match." in texts(at.text)
    assert at.get("download_button")  # jsonl: offered as a download too
    at.button(key="export_write").click().run()
    written = ws.exports_dir / "pairs.jsonl"
    assert f"Wrote 2 pairs rows to {written}." in texts(at.success)

    by_cli = tmp_path / "cli.jsonl"
    argv = ["--data-dir", str(ws.root), "export", "--kind", "pairs", "--run-id", SEED_RUN, "--max-round", "1"]
    assert cli.main([*argv, "--out", str(by_cli)]) == 0
    assert written.read_bytes() == by_cli.read_bytes()
    with Store.open(ws) as store:  # the download's bytes, made by the same function
        rows = export_rows(store, "pairs", ExportFilter(run_id=SEED_RUN, max_round=1))
    assert export_bytes(rows, "jsonl") == by_cli.read_bytes()
    assert all(json.loads(line)["round"] == 1 for line in by_cli.read_text().splitlines())

    at.selectbox(key="export_kind").set_value("preferences").run()
    assert "Nothing to export" in texts(at.info) and "cai " not in texts(at.info)
    assert not at.get("download_button")


def test_the_export_runs_in_the_background_as_cai_export_does(ws, monkeypatch):
    """ "Write in the background" starts the export job as `cai export --background` does (the page writes
    nothing itself); running that command line here writes what the page's "Write" would, and its card shows it."""
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    at = open_page(DATA)
    at.selectbox(key="export_kind").set_value("pairs")
    at.selectbox(key="export_run").set_value(SEED_RUN)
    at.number_input(key="export_max_round").set_value(1).run()
    at.button(key="export_background").click().run()
    assert not at.error, texts(at.error)
    [argv] = launched
    written = ws.exports_dir / "pairs.jsonl"
    assert f"Started {argv[-1]}" in texts(at.success) and not written.exists()

    assert cli.main(argv) == 0
    with Store.open(ws) as store:
        rows = export_rows(store, "pairs", ExportFilter(run_id=SEED_RUN, max_round=1))
    assert written.read_bytes() == export_bytes(rows, "jsonl")
    at.run()
    assert any("2/2 rows" in str(p.proto.text) for p in at.get("progress"))


# --- group 4: one working context ------------------------------------------------------------------------


def test_the_constitution_run_and_prompts_chosen_on_one_page_are_every_pages(ws):
    at = open_page(CONSTITUTION)
    assert at.selectbox(key="con_file").value == "customer_service.yaml"  # the first file, with no choice made
    at.selectbox(key="con_file").set_value("hhh.yaml").run()
    for page, key in (
        (GENERATE, "gen_constitution"),
        (AGREEMENT, "label_constitution"),
        (EVALUATE, "rounds_constitution"),
    ):
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert at.selectbox(key=key).value == "hhh.yaml", page
    at.switch_page(ANNOTATE).run()
    at.selectbox(key="annotate_constitution").set_value("red_team.yaml").run()
    at.switch_page(CONSTITUTION).run()
    assert at.selectbox(key="con_file").value == "red_team.yaml"

    later = JobFolder.create(ws.runs_dir, "later-run", {"kind": "generate", "model": "m", "config": {}})
    later.set_progress("done", 0, 0)  # an SL-CAI run with no traces, newer than the seeded one
    at.switch_page(DATA).run()
    at.selectbox(key="slcai_run").set_value(SEED_RUN)
    at.button(key="slcai_make").click().run()
    at.switch_page(EVALUATE).run()
    assert at.selectbox(key="rounds_run").options[0] == "later-run"  # the page's own default
    assert at.selectbox(key="rounds_run").value == SEED_RUN

    mine = str(ws.root / "mine.jsonl")
    at.switch_page(GENERATE).run()
    at.text_input(key="gen_prompts").set_value(mine)
    at.button(key="gen_start").click().run()  # a form's value counts once submitted (this file is absent)
    assert "mine.jsonl" in texts(at.error)
    at.switch_page(DATA).run()
    assert at.text_input(key="sample_prompts").value == mine


def test_the_sidebar_and_the_home_page_list_the_steps_in_one_order(ws):
    at = open_page()
    sidebar = [link.label for link in at.sidebar.get("page_link")]
    assert sidebar == ["Home", *(step.label for step in STEPS)]
    assert "app" not in sidebar
    home = [link.proto.page for link in at.main.get("page_link")]  # the pages linked, by their address
    assert home == [link.proto.page for link in at.sidebar.get("page_link")][1:]
    assert {step.page for step in STEPS} == {f"pages/{p.name}" for p in (PROJECT_ROOT / "pages").glob("*.py")}
    assert (PROJECT_ROOT / HOME).exists()
    at.switch_page(DATA).run()
    assert [link.label for link in at.sidebar.get("page_link")] == sidebar  # every page draws the same list


def test_no_page_message_tells_the_browser_user_to_run_a_cai_command():
    """Messages (alerts, captions, text) on the pages: none names a `cai` command, since a page does the same."""
    shown = {"error", "warning", "info", "success", "caption", "text", "write", "markdown", "toast"}
    found = []
    for path in [PROJECT_ROOT / HOME, *sorted((PROJECT_ROOT / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in shown:
                for part in ast.walk(node):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str) and "`cai " in part.value:
                        found.append(f"{path.name}:{node.lineno}: {part.value}")
    home_caption = "Every step here is also a command (`cai --help`) and a call into `cai_core`."
    assert [f for f in found if home_caption not in f] == []
