"""The annotation and agreement pages under Streamlit's AppTest, on the first 20 hh-rlhf pairs with a
second annotator and one AI label run seeded through the library."""

from __future__ import annotations

import json
import math
import random
import uuid

import pytest
from streamlit.testing.v1 import AppTest

from cai_core import cli, jobs
from cai_core.agreement import dashboard
from cai_core.backends import DEFAULT_MODEL
from cai_core.constitution import load_constitution
from cai_core.feedback import LabelConfig
from cai_core.jobs import JobFolder
from cai_core.judge_audit import queue_tightening
from cai_core.pairs import read_hh_rlhf
from cai_core.records import HumanLabel, shown_swapped, to_row
from cai_core.store import PairQueue, Store
from cai_core.workspace import PROJECT_ROOT, Workspace

from .app_pages import open_page
from .browser.seed import logprob_label, model_in_workspace
from .conftest import require_shared_data

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
ANNOTATE = "pages/5_Annotate.py"
AGREEMENT = "pages/6_Agreement.py"
PAIRS = 20


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    source = require_shared_data("hh-rlhf", "harmless-base-test-part1.jsonl.gz")
    workspace = Workspace(tmp_path / "data")
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(PROJECT_ROOT / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    found = read_hh_rlhf(source, limit=PAIRS)
    rng = random.Random(7)
    second = [HumanLabel(p.pair_id, "bo", rng.choice(["a", "b", "tie"])) for p in found.pairs[:12]]
    ai = []
    for p in found.pairs:
        p1, p2 = rng.random(), rng.random()
        ai.append(logprob_label("run-1", p.pair_id, "harm", "judge-1", "v1", p1, p2))
    seeded_run = JobFolder.create(workspace.runs_dir, "run-1", {"kind": "label", "model": "judge-1"})
    seeded_run.append("ai_labels", [to_row(a) for a in ai])
    seeded_run.set_progress("done", len(ai), len(ai))
    with Store.open(workspace) as store:
        store.add_pairs(found.pairs)
        store.import_human_labels(found.labels + second)
        store.ingest(workspace.runs_dir)
    return workspace


def panel_data(at: AppTest) -> dict | None:
    """What the page handed the labelling panel (ui/label_keys.py), or None when it drew no panel."""
    panels = at.get("bidi_component")
    if not panels:
        return None
    proto = panels[0].proto
    return json.loads(proto.mixed.json if proto.WhichOneof("data") == "mixed" else proto.json)


def send_labels(at: AppTest, labels: list[dict]) -> None:
    """What the panel's JavaScript does on Enter: set its "labels" state to every label the server has not
    acknowledged, which reruns the page. AppTest runs no JavaScript and cannot set a component's state, so
    this hands the script run the widget state the browser would send."""
    [panel] = at.get("bidi_component")
    states = at._tree.get_widget_states()
    widget = states.widgets.add()
    widget.id = panel.proto.id
    widget.json_value = json.dumps({"labels": labels})
    at._run(states)


def label_event(at: AppTest, pair_id: str, choice: str, rationale: str = "", annotator: str | None = None) -> dict:
    """A label as the panel makes it: under the annotator the page last drew it for, unless ANNOTATOR says."""
    annotator = annotator or panel_data(at)["annotator"]
    return {
        "event": uuid.uuid4().hex,
        "pair": pair_id,
        "choice": choice,
        "rationale": rationale,
        "annotator": annotator,
    }


def label_shown_pair(at: AppTest, choice: str) -> None:
    """Label the pair on screen: in the queue through the panel (its 1-5 and Enter keys), in an edit with
    the Streamlit buttons (choose, then save)."""
    if panel_data(at) is not None:
        send_labels(at, [label_event(at, current_pair(at), choice)])
        return
    at.button(key=f"choose_{choice}").click().run()
    at.button(key="submit").click().run()


def current_pair(at: AppTest) -> str | None:
    """The pair on screen: the panel's first (no label of this session is waiting), or the one being edited."""
    data = panel_data(at)
    if data is not None:
        return data["pairs"][0]["id"]
    shown = [t.value for t in at.text if str(t.value).startswith("Pair ")]
    return shown[0].removeprefix("Pair ") if shown else None


def test_annotating_five_pairs_stores_them_with_the_hidden_side_mapping(ws):
    at = open_page(ANNOTATE)
    at.text_input(key="annotator").set_value("ann").run()
    assert at.number_input(key="overlap").value == 2
    seen = {}
    for _ in range(5):
        pair_id = current_pair(at)
        with Store.open(ws) as store:
            pair = store.pair(pair_id)
        swapped = shown_swapped("ann", pair_id)
        shown = panel_data(at)["pairs"][0]
        # response A on the left is what the store put there
        assert (shown["left"], shown["right"]) == (
            (pair.response_b, pair.response_a) if swapped else (pair.response_a, pair.response_b)
        )
        seen[pair_id] = swapped
        label_shown_pair(at, "a")
        assert not at.exception, at.exception
    with Store.open(ws) as store:
        labels = {lb.pair_id: lb for lb in store.human_labels(annotator="ann")}
    assert set(labels) == set(seen)
    for pair_id, swapped in seen.items():
        assert labels[pair_id].shown_swapped == swapped
        assert labels[pair_id].choice == ("b" if swapped else "a")  # the left side, in the pair's own terms
    assert {m.label: m.value for m in at.metric}["Labelled by you"] == "5"
    assert "a" not in [t.value for t in at.text]  # the internal side names are never shown

    # undo the last label, then re-open an earlier one and change it
    last = current_pair(at)
    at.button(key="undo").click().run()
    with Store.open(ws) as store:
        assert len(store.human_labels(annotator="ann")) == 4
    undone = current_pair(at)
    assert undone in seen and undone != last
    first = next(iter(seen))
    at.selectbox(key="reopen").set_value(first).run()
    assert current_pair(at) == first
    label_shown_pair(at, "tie")
    with Store.open(ws) as store:
        assert store.human_labels(annotator="ann", pair_id=first)[0].choice == "tie"
    assert current_pair(at) == undone


def test_a_label_is_saved_on_the_pair_it_names_even_when_others_fill_it_and_a_resend_stores_nothing_twice(ws):
    at = open_page(ANNOTATE)
    at.text_input(key="annotator").set_value("eve").run()
    ahead = [pair["id"] for pair in panel_data(at)["pairs"]]
    assert len(ahead) == 5  # the look-ahead the panel labels from without a round trip
    pair_id = ahead[0]
    with Store.open(ws) as store:
        assert store.human_labels(annotator="eve") == []
        # meanwhile others give the pair the labels it wants, which takes it out of eve's queue
        missing = at.number_input(key="overlap").value - len(store.human_labels(pair_id=pair_id))
        assert missing >= 1
        for n in range(missing):
            store.save_human_label(HumanLabel(pair_id, f"someone-else-{n}", "a"))
        assert pair_id not in [i.pair_id for i in store.annotation_queue("eve", PairQueue(overlap=2), limit=100)]
        # the look-ahead is eve's: nobody else is handed those pairs meanwhile
        assert not set(ahead) & {i.pair_id for i in store.annotation_queue("someone", PairQueue(overlap=1), limit=100)}
    first = label_event(at, pair_id, "b", "B answers the question")
    send_labels(at, [first])
    assert not at.exception, at.exception
    with Store.open(ws) as store:
        [label] = store.human_labels(annotator="eve")
    assert label.pair_id == pair_id and label.rationale == "B answers the question"
    assert label.choice == ("a" if label.shown_swapped else "b")
    data = panel_data(at)
    assert data["recorded"] == [first["event"]]  # acknowledged: the browser drops it from what it resends
    assert [pair["id"] for pair in data["pairs"]] == [*ahead[1:], data["pairs"][-1]["id"]]  # refilled behind

    # eve edits that label; then the browser resends it (a reconnect, or before it saw the acknowledgement)
    at.selectbox(key="reopen").set_value(pair_id).run()
    at.button(key="choose_tie").click().run()
    at.button(key="submit").click().run()
    second = label_event(at, ahead[1], "a")
    send_labels(at, [first, second])
    assert not at.exception, at.exception
    with Store.open(ws) as store:
        labels = {lb.pair_id: lb.choice for lb in store.human_labels(annotator="eve")}
    assert labels.keys() == {pair_id, ahead[1]} and labels[pair_id] == "tie"  # once each; the edit stands
    assert sorted(panel_data(at)["recorded"]) == sorted([first["event"], second["event"]])


def test_a_label_the_page_did_not_hand_out_or_with_an_unknown_choice_is_refused_by_name(ws):
    at = open_page(ANNOTATE)
    at.text_input(key="annotator").set_value("mal").run()
    head = current_pair(at)
    with Store.open(ws) as store:
        elsewhere = next(
            p.pair_id for p in store.pairs(limit=PAIRS) if p.pair_id not in {x["id"] for x in panel_data(at)["pairs"]}
        )
    forged, unknown = label_event(at, elsewhere, "a"), label_event(at, head, "best")
    misplaced = label_event(at, head, "a", annotator="someone-else")  # kept from another annotator's session
    send_labels(at, [forged, unknown, misplaced])
    errors = " ".join(str(e.value) for e in at.error).replace("\\", "")
    assert f"pair {elsewhere}" in errors and "not handed to this page" in errors
    assert f"pair {head}" in errors and "best" in errors
    assert "made by 'someone-else', but the pair was handed to 'mal'" in errors
    with Store.open(ws) as store:
        assert store.human_labels(annotator="mal") == []
    assert sorted(panel_data(at)["recorded"]) == sorted(e["event"] for e in (forged, unknown, misplaced))  # not resent


@pytest.mark.processes
def test_an_annotator_never_sees_a_pair_twice(ws):
    at = open_page(ANNOTATE)
    at.text_input(key="annotator").set_value("cy").run()
    at.number_input(key="overlap").set_value(5).run()
    seen = []
    choices = ["a", "b", "tie", "both_bad", "skip"]
    while (pair_id := current_pair(at)) is not None:
        seen.append(pair_id)
        label_shown_pair(at, choices[len(seen) % 5])
        assert not at.exception, at.exception
        assert len(seen) <= PAIRS
    assert len(seen) == len(set(seen)) == PAIRS
    assert "Your queue is empty" in " ".join(str(s.value) for s in at.success)


def test_agreement_page_shows_the_library_figures(ws):
    at = open_page(AGREEMENT)
    with Store.open(ws) as store:
        board = dashboard(store, run_id="run-1")
    row = board.by_run.iloc[0]
    metrics = {m.label: m.value for m in at.metric}

    def fmt(value):
        return "—" if value is None or math.isnan(value) else f"{value:.3f}"

    assert metrics["Agreement (no ties)"] == fmt(row.agreement)
    assert metrics["Agreement (with ties)"] == fmt(row.agreement_with_ties)
    assert metrics["Cohen's kappa"] == fmt(row.kappa)
    assert metrics["Kappa (with ties)"] == fmt(row.kappa_with_ties)
    assert metrics["Inter-human alpha"] == fmt(board.alpha.alpha)
    assert metrics["Position consistency"] == fmt(row.position_consistency)
    assert metrics["First-position rate"] == fmt(row.first_position_rate)
    assert metrics["ECE (10 bins)"] == fmt(board.reliability.ece)
    assert board.alpha.alpha is not None and metrics["Agreement (no ties)"] != "—"
    assert not board.disagreements.empty
    assert at.selectbox(key="disagreement").value == 0
    assert len(at.get("plotly_chart")) == 4
    # the verdict heads the page, with its reasons and each signal against its threshold
    shown = [e.value for e in (*at.success, *at.warning, *at.error) if "The judge is" in str(e.value)]
    assert len(shown) == 1 and board.verdict.name in shown[0].replace("\\", "")
    [signals] = [d.value for d in at.dataframe if "signal" in d.value.columns]
    assert list(signals["signal"]) == [s.name for s in board.verdict.signals]


def test_the_agreement_page_shows_the_label_gate_and_saves_its_rule(ws):
    from cai_core.label_gate import gate, load_rule

    at = open_page(AGREEMENT)
    folders = sorted(ws.runs_dir.iterdir())
    with Store.open(ws) as store:
        expected = gate(store, "run-1").table
    [shown_gate] = [d.value for d in at.dataframe if "decision" in d.value.columns]
    assert list(shown_gate.decision) == list(expected.decision) and list(shown_gate.reason) == list(expected.reason)
    at.selectbox(key="gate_unjudged").set_value("drop")
    at.button(key="gate_save").click().run()
    assert not at.exception and load_rule(ws).unjudged == "drop"
    # what must not happen: saving the rule starts a job or labels anything
    assert sorted(ws.runs_dir.iterdir()) == folders


def test_agreement_filters_pool_principles_models_and_versions_across_runs(ws):
    """A second run by another judge under another constitution version and two principles; the page's
    filters select across both runs, and the figures are the library's for the same filters."""
    with Store.open(ws) as store:
        pairs = store.pairs(limit=PAIRS)
    rng = random.Random(8)
    second = [
        logprob_label("run-2", p.pair_id, principle, "judge-2", "v2", p1, p2)
        for i, p in enumerate(pairs)
        for principle, p1, p2 in [(("harm", "honesty")[i % 2], rng.random(), rng.random())]
    ]
    job = JobFolder.create(ws.runs_dir, "run-2", {"kind": "label", "model": "judge-2"})
    job.append("ai_labels", [to_row(a) for a in second])
    job.set_progress("done", len(second), len(second))

    at = open_page(AGREEMENT)
    assert at.multiselect(key="filter_runs").value == ["run-2"]  # the newest run first
    at.multiselect(key="filter_runs").set_value([]).run()  # none chosen: every run
    at.multiselect(key="filter_principles").set_value(["harm"]).run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    with Store.open(ws) as store:
        board = dashboard(store, principles=["harm"])
        assert set(board.by_run.run_id) == {"run-1", "run-2"}
        assert board.overall.agreement != dashboard(store, run_id="run-2", principles=["harm"]).overall.agreement
    assert metrics["Agreement (no ties)"] == f"{board.overall.agreement:.3f}"
    assert metrics["Inter-human alpha"] == f"{board.alpha.alpha:.3f}"
    assert "2 label runs" in [h.value for h in at.subheader]

    at.multiselect(key="filter_judge_models").set_value(["judge-2"]).run()
    at.multiselect(key="filter_versions").set_value(["v2"]).run()
    with Store.open(ws) as store:
        board = dashboard(store, principles=["harm"], judge_models=["judge-2"], constitution_versions=["v2"])
    assert {m.label: m.value for m in at.metric}["Agreement (no ties)"] == f"{board.overall.agreement:.3f}"
    assert any(t.value.startswith("Run run-2 · ") for t in at.text)

    at.multiselect(key="filter_versions").set_value(["v1"]).run()  # judge-2 never judged under v1
    assert "No AI label matches these filters." in [i.value for i in at.info]


def test_agreement_page_sends_label_files_to_the_data_page_and_handles_an_empty_store(ws, tmp_path, monkeypatch):
    at = open_page(AGREEMENT)
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert "Data" in links["Import people's labels from a file (hh-rlhf, CSV, JSONL) on the Data page"]
    assert not at.get("file_uploader")  # one import of people's labels, on the Data page

    monkeypatch.setenv("CAI_DATA_DIR", str(tmp_path / "empty"))
    for page in (AGREEMENT, ANNOTATE):
        at = open_page(page)
        assert not at.exception, at.exception


def test_a_labelling_run_starts_from_the_page_and_its_labels_reach_the_dashboard(ws, tiny_model_path, monkeypatch):
    """The page starts the job as `cai label --background` does; running that command line here (instead of
    in a detached process) shows the labels reaching the page."""
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    tiny_model_path = model_in_workspace(tiny_model_path, ws)  # the browser names paths inside the workspace only
    at = open_page(AGREEMENT)
    at.selectbox(key="label_constitution").set_value("hhh.yaml")
    at.text_input(key="label_model").set_value(tiny_model_path)
    at.selectbox(key="label_strategy").set_value("ensemble")
    at.selectbox(key="label_source").set_value("import")
    at.number_input(key="label_limit").set_value(3)
    at.button(key="label_start").click().run()
    assert not at.exception and not at.error, at.error
    [argv] = launched
    assert argv[:2] == ["--data-dir", str(ws.root)] and argv[2] == "resume"
    run_id = argv[3]
    config = JobFolder(ws.runs_dir / run_id).spec["config"]
    assert (config["model"], config["strategy"], config["source"], config["limit"], config["cot"]) == (
        tiny_model_path,
        "ensemble",
        "import",
        3,
        False,
    )
    assert f"Started {run_id}" in " ".join(str(s.value) for s in at.success).replace("\\", "")

    at.button(key="label_start").click().run()  # again while it is starting: it must not run twice
    assert len(launched) == 1 and "already running" in " ".join(str(i.value) for i in at.info)

    assert cli.main(argv) == 0
    at.run()
    assert not at.exception, at.exception
    enabled = len(load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml").enabled_principles)
    assert any(f"{3 * enabled}/{3 * enabled} labels" in str(p.proto.text) for p in at.get("progress"))
    assert run_id in at.multiselect(key="filter_runs").options
    with Store.open(ws) as store:
        assert dashboard(store, run_id=run_id).by_run.iloc[0].pairs == 3


def test_the_judge_defaults_to_the_sidebar_model_and_label_runs_cancel_and_resume(ws, monkeypatch):
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    running = JobFolder.create(ws.runs_dir, "label-busy", {"kind": "label", "model": "m", "config": {}})
    running.set_progress("running", 1, 10)  # this process's pid, so it counts as alive
    failed = JobFolder.create(ws.runs_dir, "label-broken", {"kind": "label", "model": "m", "config": {}})
    failed.set_progress("failed", 3, 10, "BackendError: out of memory")

    at = open_page(AGREEMENT)
    assert "This run failed" in " ".join(str(e.value) for e in at.error)
    assert "BackendError: out of memory" in [c.value for c in at.code]
    at.number_input(key="label_limit").set_value(2)
    at.button(key="label_start").click().run()
    assert "Not started" not in " ".join(str(e.value) for e in at.error)
    [argv] = launched
    assert JobFolder(ws.runs_dir / argv[3]).spec["model"] == DEFAULT_MODEL

    at.button(key="cancel-label-busy").click().run()
    assert running.cancel_requested()
    at.button(key="resume-label-broken").click().run()
    assert launched[1] == ["--data-dir", str(ws.root), "resume", "label-broken"]
    assert not at.exception, at.exception


def test_disagreement_first_mode_serves_contested_pairs_first_and_the_agreement_page_reweights(ws):
    at = open_page(ANNOTATE)
    at.text_input(key="annotator").set_value("ann").run()
    at.radio(key="queue_mode").set_value("contested").run()
    assert not at.exception and at.selectbox(key="queue_run").value == "run-1"
    on_screen = current_pair(at)  # drawn in order when the name was typed: it stays until labelled
    with Store.open(ws) as store:
        full = {lb.pair_id for lb in store.human_labels(annotator="bo")}  # two labels already: not wanted again
        expected = [p for p in store.queue_scores("run-1").pair_id if p not in full | {on_screen}]
    served = []
    for choice in ("a", "b", "a", "a", "b", "a"):
        served.append(current_pair(at))
        label_shown_pair(at, choice)
    assert served == [on_screen, *expected[:5]]

    at = open_page(AGREEMENT)
    assert any("1/π" in str(c.value) for c in at.caption)  # the reweighted estimate, and how it is reweighted
    assert len(at.get("plotly_chart")) == 5  # the four of the dashboard and the queue's estimate
    with Store.open(ws) as store:
        assert list(queue_tightening(store, "run-1").labelled_pairs) == [1, 2, 3, 4, 5]  # the five it served


def test_a_calibration_is_fitted_as_a_job_from_the_page_and_its_before_and_after_shown(
    ws, tiny_model_path, monkeypatch
):
    """The click starts a job, as `cai calibrate --background` does, and returns: the page shows its card (progress,
    Cancel) instead of holding the tab; running that command line here shows the result reaching the page."""
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    tiny = model_in_workspace(tiny_model_path, ws)
    job = jobs.run("label", LabelConfig(constitution=HHH, model=tiny, source="import"), ws)
    at = open_page(AGREEMENT)
    at.selectbox(key="calibrate_run").set_value(job.run_id)
    at.button(key="fit_calibration").click().run()
    assert not at.exception and not at.error, at.error
    [argv] = launched
    assert argv[:2] == ["--data-dir", str(ws.root)] and argv[2] == "resume"
    calibration_id = argv[3]
    assert JobFolder(ws.runs_dir / calibration_id).spec["kind"] == "calibrate"
    assert at.button(key=f"cancel-{calibration_id}")  # its card, with its Cancel, while it is pending
    with Store.open(ws) as store:
        assert store.calibrations().empty  # nothing fitted in the page's own run

    assert cli.main(argv) == 0
    at.run()
    assert not at.exception, at.exception
    with Store.open(ws) as store:
        assert list(store.calibrations().calibration_id) == [calibration_id]
    assert at.selectbox(key="calibration").value == calibration_id
    [report] = [d.value for d in at.dataframe if "stage" in d.value.columns]
    assert list(report["stage"]) == ["before", "contextual", "after"]
    assert {"agreement", "ece", "swap_consistency"} <= set(report.columns)
    with Store.open(ws) as store:
        calibrated = dashboard(store, run_id=job.run_id, calibration=calibration_id)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Position consistency"] == f"{calibrated.overall['position_consistency']:.3f}"


def test_a_label_sent_as_the_name_changes_is_filed_under_the_annotator_it_was_handed_to(ws):
    at = open_page(ANNOTATE)
    at.text_input(key="annotator").set_value("nia").run()
    head, following = (pair["id"] for pair in panel_data(at)["pairs"][:2])
    at.text_input(key="annotator").set_value("ola")
    send_labels(at, [label_event(at, head, "a")])  # one rerun carries both: the new name and nia's label
    assert not at.exception, at.exception
    at.text_input(key="annotator").set_value("")
    # nia's panel made it; the run that brings it stops for want of a name, but records it first
    send_labels(at, [label_event(at, following, "b", annotator="nia")])
    assert not at.exception, at.exception
    with Store.open(ws) as store:
        assert [lb.pair_id for lb in store.human_labels(annotator="nia")] == sorted([head, following])
        assert [
            (lb.annotator, lb.pair_id) for lb in store.human_labels(pair_id=head) if lb.annotator in {"nia", "ola"}
        ] == [("nia", head)]


@pytest.fixture
def seeded_ws(tmp_path, monkeypatch) -> Workspace:
    """The browser tests' seed (30 pairs and a finished AI label run over them) and a person's label on each."""
    from .browser.seed import seed_pairs, seeded_data

    workspace = seeded_data(tmp_path)
    found = seed_pairs(workspace, tmp_path / "constitutions" / "hhh.yaml")
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(tmp_path / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        store.import_human_labels([HumanLabel(p.pair_id, "ann", "ab"[i % 2]) for i, p in enumerate(found)])
    return workspace


def test_the_agreement_tables_name_their_columns_in_words_with_help(seeded_ws):
    at = open_page(AGREEMENT)
    shown = {}
    for table in at.dataframe:
        config = json.loads(table.proto.columns or "{}")
        for column in table.value.columns:
            shown[column] = config.get(column, {})
    assert {"principle_id", "agreement_low", "first_position_rate", "flip_rate", "run_id"} <= set(shown)
    raw = {column: c for column, c in shown.items() if "_" in c.get("label", column) or not c.get("help")}
    assert raw == {}, raw
    assert shown["flip_rate"]["label"] == "Flip rate"
