"""The Evaluate page under Streamlit's AppTest: results of a finished tiny-model evaluation, the drill-down,
and launching a run from the page."""

from __future__ import annotations

import json
import time

import pytest

from cai_core import jobs
from cai_core.critique import GenerateConfig
from cai_core.evaluation import DEFAULT_CONSTITUTION, EvalConfig, RoundsConfig
from cai_core.jobs import list_job_folders
from cai_core.workspace import PROJECT_ROOT, Workspace

from .app_pages import open_page
from .browser.seed import model_in_workspace
from .conftest import require_shared_data

EVALUATE = "pages/7_Evaluate.py"


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    workspace = Workspace(tmp_path / "data")
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(PROJECT_ROOT / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    return workspace


HOSTILE_CATEGORY = "**bold** ![tracker](http://127.0.0.1:9/pixel.png) [link](http://127.0.0.1:9) www.example.com"


def test_finished_runs_show_every_chart_and_each_prompts_answers(ws, tiny_model_path, second_tiny_model_path):
    hostile = ws.root / "hostile.jsonl"
    hostile.parent.mkdir(parents=True)
    hostile.write_text(json.dumps({"id": "h1", "prompt": "Hello?", "category": HOSTILE_CATEGORY}) + "\n")
    jobs.run(
        "eval",
        EvalConfig(
            models=[f"base={tiny_model_path}", f"tuned={second_tiny_model_path}"],
            sets=["red-team#limit=2", "benign#limit=2", f"{hostile}#as=harmful"],
            wrappers=["none", "hypothetical"],
            judge=tiny_model_path,
            max_new_tokens=6,
        ),
        ws,
    )
    traces = jobs.run(
        "generate",
        GenerateConfig(
            DEFAULT_CONSTITUTION,
            str(ws.demo_prompts),
            model=tiny_model_path,
            rounds=2,
            limit=2,
            max_new_tokens=6,
            early_stop=False,
        ),
        ws,
    )
    jobs.run("eval-rounds", RoundsConfig(traces_run=traces.run_id, judge=tiny_model_path), ws)

    at = open_page(EVALUATE)
    assert at.selectbox(key="result_run").value.startswith("eval-")
    assert at.selectbox(key="result_rounds_run").value.startswith("rounds-")
    chart_keys = {chart.proto.id for chart in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) == 6, chart_keys  # 2 win rates, ratings, refusals, principles, rounds
    assert at.get("download_button")[0].label.startswith("Download the report")

    at.selectbox(key="drill_wrapper").select("hypothetical").run()
    prompt_key = at.selectbox(key="drill_prompt").value
    shown = [code.value for code in at.get("code")]
    assert any("thriller" in text for text in shown)  # the prompt as sent, in its wrapper
    assert prompt_key.split("/")[0] in ("red-team", "benign", "hostile")
    assert "base · " in "\n".join(t.value for t in at.text) and "tuned · " in "\n".join(t.value for t in at.text)
    assert not at.exception and not at.error

    # user data is shown as text: no markdown element carries the category (an image would load, a link render)
    at.selectbox(key="drill_wrapper").select("none").run()
    at.selectbox(key="drill_prompt").select("hostile/h1").run()
    assert f"harmful · category {HOSTILE_CATEGORY}" in [t.value for t in at.text]
    for element in (*at.markdown, *at.caption):
        assert "tracker" not in element.value and "example" not in element.value


@pytest.mark.processes
def test_launching_from_the_page_runs_in_the_background(ws, tiny_model_path, second_tiny_model_path):
    tiny_model_path = model_in_workspace(tiny_model_path, ws)  # the browser names paths inside the workspace only
    second_tiny_model_path = model_in_workspace(second_tiny_model_path, ws)
    at = open_page(EVALUATE)
    assert any("No results yet" in i.value for i in at.info)
    at.text_area(key="eval_more_models").input(f"a={tiny_model_path}\nb={second_tiny_model_path}")
    at.multiselect(key="eval_models").set_value([])
    at.multiselect(key="eval_sets").set_value(["benign"])
    at.text_area(key="eval_more_sets").input("red-team#limit=1,name=one")
    at.number_input(key="eval_set_limit").set_value(3)  # for each set, unless its line names its own
    at.text_input(key="eval_judge").input(tiny_model_path)
    at.number_input(key="eval_tokens").set_value(4)
    at.button(key="eval_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(s.value.startswith("Started eval-") for s in at.success)
    job = next(j for j in list_job_folders(ws.runs_dir) if j.spec["kind"] == "eval")
    deadline = time.monotonic() + 240
    while job.progress().status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(1)
    assert job.progress().status == "done", job.log_tail()
    assert job.spec["config"]["sets"] == ["benign#limit=3", "red-team#name=one,limit=1"]
    assert len(job.read("eval_answers")) == 2 * 4  # 3 benign prompts and 1 red-team prompt, 2 models


def test_a_bad_set_is_refused_before_anything_starts(ws, tiny_model_path, tmp_path):
    at = open_page(EVALUATE)
    at.text_area(key="eval_more_models").input(f"a={model_in_workspace(tiny_model_path, ws)}")
    at.text_area(key="eval_more_sets").input(str(ws.root / "missing.csv"))
    at.button(key="eval_start").click().run()
    assert any("Not started" in e.value and "no such prompt file" in e.value for e in at.error)
    # a file outside the workspace, a model outside it, a URL the operator did not list: refused the same way
    outside = tmp_path / "secret.csv"
    outside.write_text("prompt\nsecret\n")
    at.text_area(key="eval_more_sets").input(f"{outside}#as=harmful")
    at.button(key="eval_start").click().run()
    assert any("Not started" in e.value and "outside the workspace" in e.value.replace("\\", "") for e in at.error)
    at.text_area(key="eval_more_sets").input("red-team#limit=1")
    for model in (tiny_model_path, "openai:gpt@http://attacker.example/v1"):
        at.text_area(key="eval_more_models").input(f"a={model}")
        at.button(key="eval_start").click().run()
        assert any(
            "Not started" in e.value and ("outside the workspace" in e.value.replace("\\", "") or "listed" in e.value)
            for e in at.error
        ), [e.value for e in at.error]
    assert not [j for j in list_job_folders(ws.runs_dir) if j.spec["kind"] == "eval"]


def test_a_standard_set_is_offered_by_name_though_its_file_is_outside_the_workspace(ws, tiny_model_path, tmp_path):
    from cai_core.evalsets import set_file

    require_shared_data("xstest", "xstest_prompts.csv")
    at = open_page(EVALUATE)
    assert "xstest" in at.multiselect(key="eval_sets").options
    at.text_area(key="eval_more_models").input(f"a={model_in_workspace(tiny_model_path, ws)}")
    at.text_area(key="eval_more_sets").input("xstest#limit=1")
    # the judge, read after the sets, is refused: the run stops there, having accepted the set by its name
    at.text_input(key="eval_judge").input(str(tmp_path / "judge"))
    at.button(key="eval_start").click().run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert any("Not started" in e and str(tmp_path / "judge") in e for e in errors), errors
    # what must not happen: the file it names becomes typeable from the browser
    at.text_area(key="eval_more_sets").input(f"{set_file('xstest')}#limit=1")
    at.button(key="eval_start").click().run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert any("Not started" in e and "xstest_prompts.csv" in e and "outside the workspace" in e for e in errors)
    assert not [j for j in list_job_folders(ws.runs_dir) if j.spec["kind"] == "eval"]


@pytest.mark.processes
def test_a_ppo_trained_model_is_offered_and_answers(ws, tiny_model_path, tmp_path):
    tiny_model_path = model_in_workspace(tiny_model_path, ws)  # the browser names paths inside the workspace only
    from cai_core.train import train
    from cai_core.train.ppo import PPOConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Question {i}?"}}\n' for i in range(8)))
    ppo = train(
        PPOConfig(
            model=tiny_model_path,
            dataset=str(prompts),
            reward_model="tests.train_rewards:low_ids",
            max_steps=2,
            batch_size=4,
            ppo_epochs=1,
            max_new_tokens=4,
            save_steps=100,
        ),
        ws,
    )
    final = str(ppo.path / "final")
    at = open_page(EVALUATE)
    options = at.multiselect(key="eval_models").options
    [label] = [o for o in options if o.startswith("PPO")]  # the registry's PPO model, by its label
    at.multiselect(key="eval_models").set_value([final])
    at.text_area(key="eval_more_models").input(f"base={tiny_model_path}")
    at.multiselect(key="eval_sets").set_value([])
    at.text_area(key="eval_more_sets").input("red-team#limit=2")
    at.text_input(key="eval_judge").input(tiny_model_path)
    at.number_input(key="eval_tokens").set_value(4)
    at.button(key="eval_start").click().run()
    assert not at.error, [e.value for e in at.error]
    job = next(j for j in list_job_folders(ws.runs_dir) if j.spec["kind"] == "eval")
    deadline = time.monotonic() + 240
    while job.progress().status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(1)
    assert job.progress().status == "done", job.log_tail()
    ppo_answers = [a for a in job.read("eval_answers") if a["model"] == label]
    assert len(ppo_answers) == 2 and label.startswith(f"PPO · {ppo.run_id}")


def test_a_file_set_is_added_by_mapping_its_columns(ws, tmp_path):
    from cai_core.evalsets import EvalSet

    path = ws.root / "mine.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("qid,text,kind\nq1,How do I kill a Python process?,homonyms\nq2,Tell me a joke,everyday\n")
    at = open_page(EVALUATE)
    at.text_input(key="set_source").input(str(path)).run()
    assert at.selectbox(key="set_prompt").options == ["qid", "text", "kind"]
    at.selectbox(key="set_prompt").select("text")
    at.selectbox(key="set_id").select("qid")
    at.selectbox(key="set_category").select("kind")
    at.selectbox(key="set_as").select("benign").run()  # in a browser each choice reruns the page at once
    at.button(key="set_add").click().run()
    [spec] = at.text_area(key="eval_more_sets").value.splitlines()
    prompts = EvalSet.parse(spec).load()
    assert [(p.key, p.prompt, p.category, p.label) for p in prompts] == [
        ("mine/q1", "How do I kill a Python process?", "homonyms", "benign"),
        ("mine/q2", "Tell me a joke", "everyday", "benign"),
    ]
    at.text_input(key="set_source").input(str(ws.root / "nothing.csv")).run()
    assert any("no such file" in e.value for e in at.error) and not at.exception
    at.text_input(key="set_source").input(str(tmp_path / "elsewhere.csv")).run()  # its columns are not shown
    assert any("outside the workspace" in e.value.replace("\\", "") for e in at.error) and not at.exception


def seed_evaluation_by_an_unreliable_judge(ws: Workspace) -> None:
    """A finished comparison judged by "judge-x", and the judge's audit: a label run of judge-x that flips under
    swap and goes against people on most pairs, so its verdict is unreliable."""
    from cai_core.jobs import JobFolder
    from cai_core.records import AILabel, EvalAnswer, EvalJudgment, HumanLabel, Pair, to_row
    from cai_core.store import Store

    evaluation = JobFolder.create(ws.runs_dir, "eval-x", {"kind": "eval", "model": "judge-x", "config": {}})
    prompts = [f"red/{i}" for i in range(6)]
    evaluation.append(
        "eval_answers",
        [
            to_row(EvalAnswer("eval-x", key, "none", model, "red", "p", "p", "", "harmful", "a", False, 1, 0))
            for key in prompts
            for model in ("base", "tuned")
        ],
    )
    evaluation.append(
        "eval_judgments",
        [
            to_row(
                EvalJudgment(
                    "eval-x",
                    key,
                    "none",
                    "harmlessness",
                    "tuned",
                    "base",
                    "harm",
                    0.9,
                    0.2,
                    0.85,
                    False,
                    "judge-x",
                    "v1",
                )
            )
            for key in prompts
        ],
    )
    evaluation.set_progress("done", 12, 12)
    labels = JobFolder.create(ws.runs_dir, "label-x", {"kind": "label", "model": "judge-x", "config": {}})
    pairs = [Pair(f"x{i:02d}", f"q{i}", "a", "b", "import", "t", i, "a", "b") for i in range(40)]
    # the first-shown answer always wins: a flip on every pair, and P(a better) 0.5 +- noise
    labels.append(
        "ai_labels",
        [
            to_row(
                AILabel(
                    "label-x",
                    p.pair_id,
                    "harm",
                    "judge-x",
                    "v1",
                    "sample",
                    "logprob",
                    False,
                    0,
                    0.9,
                    0.9,
                    0.45 if i % 4 else 0.55,
                    False,
                )
            )
            for i, p in enumerate(pairs)
        ],
    )
    labels.set_progress("done", 40, 40)
    with Store.open(ws) as store:
        store.add_pairs(pairs)
        store.import_human_labels([HumanLabel(p.pair_id, "ann", "a", False, "") for p in pairs])
        store.ingest(ws.runs_dir)


def test_win_rates_judged_by_an_unreliable_judge_carry_a_caveat_on_the_page_and_in_the_report(ws):
    from cai_core.eval_report import report_html, summarize
    from cai_core.store import Store

    seed_evaluation_by_an_unreliable_judge(ws)
    at = open_page(EVALUATE)
    assert at.selectbox(key="result_run").value == "eval-x"
    assert at.get("plotly_chart")  # the win rates are drawn
    caveats = [w.value.replace("\\", "") for w in at.warning if "unreliable" in w.value]
    assert len(caveats) == 1 and "judge-x" in caveats[0] and "win rates" in caveats[0], [w.value for w in at.warning]
    with Store.open(ws) as store:
        page = report_html(summarize(store, "eval-x"))
    assert "judge-x is unreliable" in page


def test_an_inspect_evaluations_score_joins_the_results(ws):
    from cai_core.records import InspectScore, to_row

    job = jobs.JobFolder.create(ws.runs_dir, "inspect-abc", {"kind": "inspect", "model": "default", "config": {}})
    job.append(
        "inspect_scores", [to_row(InspectScore("inspect-abc", "xstest", "cai/default", "s", "accuracy", 0.625, "x"))]
    )
    at = open_page(EVALUATE)
    (table,) = [frame for frame in at.dataframe if "scorer" in frame.value.columns]
    assert table.value.value.tolist() == [0.625]
    assert not at.exception
