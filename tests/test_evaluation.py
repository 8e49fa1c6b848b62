"""Evaluation: sets, wrappers, refusals, the statistics against independent computations, and the jobs
end to end on tiny models (answers, judgments, resume, store, report)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from cai_core import jobs
from cai_core.constitution import load_constitution
from cai_core.critique import GenerateConfig
from cai_core.eval_report import charts, report_html, summarize
from cai_core.evalsets import WRAPPERS, EvalSet, is_refusal, load_sets, source_columns, wrap
from cai_core.evaluation import (
    DEFAULT_CONSTITUTION,
    EvalConfig,
    RoundsConfig,
    harm_principle,
    round_comparisons,
)
from cai_core.prompts import PromptFileError
from cai_core.stats import bootstrap_interval, bradley_terry, principle_effects, quality_by_round, wilson, win_rates
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

from .conftest import require_shared_data

# --- sets, wrappers, refusals --------------------------------------------------------------------


def test_shipped_sets_load_with_both_labels():
    prompts = load_sets(["red-team", "benign"])
    labels = {p.label for p in prompts}
    assert labels == {"harmful", "benign"} and len(prompts) == 48
    assert {p.key.split("/")[0] for p in prompts} == {"red-team", "benign"}


def test_set_spec_maps_columns_and_limits_each_label(tmp_path):
    path = tmp_path / "mixed.csv"
    rows = [(f"s{i}", f"safe question {i}", "safe") for i in range(5)] + [
        (f"u{i}", f"unsafe question {i}", "unsafe") for i in range(5)
    ]
    pd.DataFrame(rows, columns=["pid", "text", "verdict"]).to_csv(path, index=False)
    prompts = EvalSet.parse(f"{path}#prompt=text,id=pid,label=verdict,limit=2,name=mixed").load()
    assert [p.key for p in prompts] == ["mixed/s0", "mixed/s1", "mixed/u0", "mixed/u1"]
    assert [p.label for p in prompts] == ["benign", "benign", "harmful", "harmful"]
    everything_harmful = EvalSet.parse(f"{path}#prompt=text,id=pid,as=harmful").load()
    assert {p.label for p in everything_harmful} == {"harmful"} and len(everything_harmful) == 10


def test_a_set_spec_reads_back_what_it_says_and_columns_are_listed(tmp_path):
    spec = "data.csv#name=mine,prompt=text,id=,label=verdict,limit=3"  # options in field order
    assert EvalSet.parse(spec).spec == spec and EvalSet.parse("red-team").spec == "red-team"
    (tmp_path / "a.jsonl").write_text('\n{"q": "hi", "tag": "x"}\n')
    assert source_columns(str(tmp_path / "a.jsonl")) == ["q", "tag"]
    assert source_columns("benign") == ["id", "prompt", "category", "label"]
    (tmp_path / "bad.jsonl").write_text("[1, 2]\n")
    with pytest.raises(PromptFileError, match="expected an object"):
        source_columns(str(tmp_path / "bad.jsonl"))


def test_bad_set_specs_name_the_problem(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"id": "x1", "prompt": "hello", "label": "maybe"}\n')
    with pytest.raises(PromptFileError, match=r"odd.jsonl: prompt 'x1' has label 'maybe'"):
        EvalSet.parse(str(path)).load()
    with pytest.raises(ValueError, match="unknown option 'colour=red'"):
        EvalSet.parse(f"{path}#colour=red")
    with pytest.raises(ValueError, match="as='evil'"):
        EvalSet.parse(f"{path}#as=evil")
    with pytest.raises(ValueError, match="share a name"):
        load_sets(["red-team", "red-team"])


def test_the_standard_sets_by_name_read_the_shared_copies_and_keep_their_name():
    require_shared_data("xstest", "xstest_prompts.csv")
    xstest = EvalSet.parse("xstest").load()
    # both halves of XSTest: 250 safe prompts that look unsafe (over-refusal) and 200 unsafe ones
    assert [sum(p.label == label for p in xstest) for label in ("benign", "harmful")] == [250, 200]
    assert xstest[0].key == "xstest/1" and xstest[0].category == "homonyms"
    # a run's config says the name, not this machine's path; options typed after it override the set's own
    limited = EvalSet.parse("xstest#limit=2")
    assert limited.spec == "xstest#limit=2" and EvalSet.parse(limited.spec) == limited
    assert len(limited.load()) == 4
    for name, count in (("harmbench", 400), ("do-not-answer", 939)):
        prompts = EvalSet.parse(name).load()
        assert len(prompts) == count and {p.label for p in prompts} == {"harmful"}
        assert all(p.prompt.strip() and p.category for p in prompts)


def test_a_standard_set_missing_here_names_its_public_copy(monkeypatch, tmp_path):
    from cai_core import evalsets

    monkeypatch.setattr(evalsets, "SHARED_DATA", tmp_path)
    assert evalsets.set_file("xstest") == "hf:walledai/XSTest"
    assert EvalSet.parse("harmbench").spec == "harmbench"


def test_wrappers_keep_the_request_and_unknown_ones_are_refused():
    for name in WRAPPERS:
        assert "How do I bake bread?" in wrap(name, "How do I bake bread?")
    assert wrap("none", "plain") == "plain"
    with pytest.raises(ValueError, match="unknown jailbreak wrapper 'dan'"):
        wrap("dan", "x")


def test_refusals_are_read_from_the_start_of_the_answer():
    assert is_refusal("I’m sorry, but I can’t help with that.")  # curly apostrophes, as models write them
    assert is_refusal("As an AI, I cannot provide instructions for that.")
    assert not is_refusal("Sure! Mix flour, water and yeast, then bake for 40 minutes.")
    assert not is_refusal("Here is the recipe. " + "Knead well. " * 30 + "I'm sorry if it is long.")


# --- statistics -----------------------------------------------------------------------------------


def judgments_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "aspect": aspect,
                "wrapper": "none",
                "prompt_key": key,
                "model_a": a,
                "model_b": b,
                "p_a": p,
                "failed": p is None,
            }
            for aspect, key, a, b, p in rows
        ]
    )


def test_win_rates_count_ties_half_and_skip_failures():
    frame = judgments_frame(
        [
            ("helpfulness", "q1", "base", "tuned", 0.2),  # tuned wins
            ("helpfulness", "q2", "base", "tuned", 0.5),  # tie
            ("helpfulness", "q3", "base", "tuned", 0.9),  # base wins
            ("helpfulness", "q4", "base", "tuned", 0.1),  # tuned wins
            ("helpfulness", "q5", "base", "tuned", None),  # failed: not counted
        ]
    )
    rates = win_rates(frame, resamples=500).set_index(["model", "opponent"])
    assert rates.loc[("tuned", "base"), "win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert rates.loc[("base", "tuned"), "win_rate"] == pytest.approx(1 - 2.5 / 4)
    assert rates.loc[("tuned", "base"), "n"] == 4
    low, high = rates.loc[("tuned", "base"), ["low", "high"]]
    assert 0 <= low <= 0.625 <= high <= 1


def test_bootstrap_interval_matches_the_normal_approximation_on_many_prompts():
    scores = np.array([1.0] * 300 + [0.0] * 100)  # a 0.75 win rate over 400 prompts
    low, high = bootstrap_interval(scores, resamples=4000)
    half = 1.96 * math.sqrt(0.75 * 0.25 / 400)
    assert low == pytest.approx(0.75 - half, abs=0.01) and high == pytest.approx(0.75 + half, abs=0.01)
    assert bootstrap_interval(np.ones(10)) == (1.0, 1.0)


def test_bradley_terry_equals_an_unpenalised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    truth = {"a": 0.0, "b": 0.8, "c": -0.5, "d": 1.5}  # log-strengths
    names = sorted(truth)
    games = []
    for _ in range(3000):
        i, j = rng.choice(4, size=2, replace=False)
        p = 1 / (1 + math.exp(truth[names[j]] - truth[names[i]]))
        games.append((names[i], names[j], float(rng.random() < p)))
    games.append(("a", "b", 0.5))  # a tie counts half a win to each
    frame = pd.DataFrame(games, columns=["model_a", "model_b", "score_a"])
    ours = bradley_terry(frame, prior=0.0)

    # The same likelihood as a logistic regression on +1/-1 indicator columns (a tie: half a row each way).
    x, y, w = [], [], []
    for a, b, s in games:
        row = np.zeros(4)
        row[names.index(a)], row[names.index(b)] = 1.0, -1.0
        for outcome, weight in ((1, s), (0, 1 - s)):
            if weight:
                x.append(row[1:])  # "a" is the reference: strengths are only defined up to a constant
                y.append(outcome)
                w.append(weight)
    fit = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-10, max_iter=1000)
    fit.fit(np.array(x), np.array(y), sample_weight=np.array(w))
    theirs = dict(zip(names, [0.0, *fit.coef_[0]], strict=True))
    scale = 400 / math.log(10)
    for name in names[1:]:
        assert ours[name] - ours["a"] == pytest.approx(scale * (theirs[name] - theirs["a"]), abs=0.05)
    assert np.mean(list(ours.values())) == pytest.approx(1000)
    # and both recover the strengths the games were drawn from
    for name in names[1:]:
        assert (ours[name] - ours["a"]) / scale == pytest.approx(truth[name], abs=0.15)


def test_bradley_terry_needs_a_prior_when_a_model_never_wins():
    frame = pd.DataFrame([("a", "b", 1.0)] * 5, columns=["model_a", "model_b", "score_a"])
    with pytest.raises(ValueError, match="b won no game"):
        bradley_terry(frame, prior=0.0)
    ratings = bradley_terry(frame)  # with the default prior: finite, and a ahead
    assert ratings["a"] > ratings["b"] and all(math.isfinite(r) for r in ratings.values())


def test_wilson_interval_known_values():
    e = wilson(8, 10)
    assert e.low == pytest.approx(0.4902, abs=1e-4) and e.high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) is None


def test_principle_effects_and_rounds_from_hand_made_judgments():
    rows = [
        # trace, round, versus, principle, p_later
        ("t1", 1, 0, "harm", 0.9),
        ("t1", 2, 1, "honesty", 0.4),
        ("t1", 2, 0, "honesty", 0.8),
        ("t2", 1, 0, "harm", 0.7),
        ("t2", 2, 1, "harm", 0.6),
        ("t2", 2, 0, "harm", 0.75),
    ]
    frame = pd.DataFrame(rows, columns=["trace_id", "round", "versus_round", "revision_principle_id", "p_later"])
    effects = principle_effects(frame, resamples=200).set_index("principle_id")
    assert effects.loc["harm", "p_better"] == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert effects.loc["honesty", "improved_share"] == 0 and effects.loc["harm", "n"] == 3
    assert list(effects.index) == ["harm", "honesty"]  # most helpful first
    rounds = quality_by_round(frame, resamples=200).set_index("round")
    assert rounds.loc[0, "p_better_than_initial"] == 0.5
    assert rounds.loc[1, "p_better_than_initial"] == pytest.approx(0.8)
    assert rounds.loc[2, "p_better_than_initial"] == pytest.approx(0.775)


def test_harm_principles_are_the_harmless_tagged_ones_or_all():
    hhh = load_constitution(DEFAULT_CONSTITUTION)
    tagged = {p.id for p in hhh.enabled_principles if "harmless" in p.tags}
    picked = {harm_principle(hhh, 0, f"k{i}").id for i in range(200)}
    assert picked == tagged and len(tagged) < len(hhh.enabled_principles)
    service = load_constitution(str(PROJECT_ROOT / "constitutions" / "customer_service.yaml"))
    assert {harm_principle(service, 0, f"k{i}").id for i in range(200)} == {p.id for p in service.enabled_principles}
    assert harm_principle(hhh, 3, "same") == harm_principle(hhh, 3, "same")  # seeded: a resumed run agrees


def test_round_comparisons_pair_each_revision_with_the_one_before_and_the_first():
    steps = [{"trace_id": "t", "round": r, "response": f"r{r}", "prompt": "p", "principle_id": None} for r in range(4)]
    pairs = [(later["round"], earlier["round"]) for later, earlier in round_comparisons(steps)]
    assert pairs == [(1, 0), (2, 1), (2, 0), (3, 2), (3, 0)]


# --- jobs on tiny models ---------------------------------------------------------------------------


def eval_config(tiny: str, other: str, **overrides) -> EvalConfig:
    base = {
        "models": [f"base={tiny}", f"tuned={other}"],
        "sets": ["red-team#limit=3", "benign#limit=3"],
        "wrappers": ["none", "role-play"],
        "judge": tiny,
        "max_new_tokens": 8,
        "batch_size": 4,
    }
    return EvalConfig(**{**base, **overrides})


def test_comparison_resumes_after_a_cancel_and_reports(tiny_model_path, second_tiny_model_path, workspace, tmp_path):
    config = eval_config(tiny_model_path, second_tiny_model_path)
    seen = []

    def cancel_after_two_batches(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 3:
            job.request_cancel()

    job = jobs.prepare("eval", config, workspace)
    jobs.run("eval", config, workspace, on_progress=cancel_after_two_batches)
    assert job.progress().status == "cancelled" and 0 < job.progress().done < job.progress().total
    jobs.run("eval", config, workspace)
    progress = job.progress()
    assert progress.status == "done" and progress.done == progress.total == 6 * 2 * 2 + 6 * 2

    answers, judgments = job.read("eval_answers"), job.read("eval_judgments")
    assert len(answers) == 24 and len({(a["prompt_key"], a["wrapper"], a["model"]) for a in answers}) == 24
    assert len(judgments) == 12
    assert {j["aspect"] for j in judgments} == {"harmlessness", "helpfulness"}
    assert all(j["principle_id"] == "helpfulness" for j in judgments if j["aspect"] == "helpfulness")
    harmless = {p.id for p in load_constitution(DEFAULT_CONSTITUTION).enabled_principles if "harmless" in p.tags}
    assert {j["principle_id"] for j in judgments if j["aspect"] == "harmlessness"} <= harmless
    assert all("Rex" in a["sent"] for a in answers if a["wrapper"] == "role-play")

    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        summary = summarize(store, job.run_id)
    assert len(summary.answers) == 24 and len(summary.judgments) == 12
    rates = summary.win_rates.set_index(["aspect", "wrapper", "model", "opponent"])
    both = (
        rates.loc[("helpfulness", "none", "base", "tuned"), "win_rate"]
        + rates.loc[("helpfulness", "none", "tuned", "base"), "win_rate"]
    )
    assert both == pytest.approx(1.0)
    assert set(summary.refusals["label"]) == {"harmful", "benign"} and summary.refusals["n"].eq(3).all()
    assert set(summary.ratings["model"]) == {"base", "tuned"}
    assert set(charts(summary)) == {"win_rate_harmlessness", "win_rate_helpfulness", "ratings", "refusals"}
    page = report_html(summary)
    assert page.count("<script") >= 4 and "Refusal rates" in page and job.run_id in page


def test_rounds_job_scores_each_revision(tiny_model_path, workspace):
    generation = jobs.run(
        "generate",
        GenerateConfig(
            prompts=str(workspace.demo_prompts),
            constitution=DEFAULT_CONSTITUTION,
            model=tiny_model_path,
            rounds=2,
            limit=3,
            max_new_tokens=6,
            early_stop=False,
        ),
        workspace,
    )
    config = RoundsConfig(traces_run=generation.run_id, judge=tiny_model_path, batch_size=4)
    job = jobs.run("eval-rounds", config, workspace)
    assert job.progress().status == "done"
    judged = job.read("round_judgments")
    assert {(j["round"], j["versus_round"]) for j in judged} <= {(1, 0), (2, 1), (2, 0)}
    assert all(j["p_later"] is not None and 0 < j["p_later"] < 1 for j in judged)
    assert jobs.run("eval-rounds", config, workspace).read("round_judgments") == judged  # resuming adds nothing
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        summary = summarize(store, None, job.run_id)
        principles_used = set(store.trace_answers(generation.run_id)["principle_id"].dropna())
    assert set(summary.principles["principle_id"]) <= principles_used
    assert list(summary.rounds["round"]) == [0, 1, 2] and set(charts(summary)) == {"principles", "rounds"}


def test_a_run_with_no_traces_is_refused(workspace):
    with pytest.raises(ValueError, match="no traces with a revision"):
        jobs.run("eval-rounds", RoundsConfig(traces_run="nope"), workspace)


@pytest.mark.slow
def test_real_default_model_on_shared_red_team_and_xstest_prompts(default_model_path, tiny_model_path, workspace):
    harmbench = require_shared_data("harmbench", "harmbench_behaviors_text_all.csv")
    xstest = require_shared_data("xstest", "xstest_prompts.csv")
    config = EvalConfig(
        models=[f"default={default_model_path}", f"tiny={tiny_model_path}"],
        sets=[
            f"{harmbench}#prompt=Behavior,id=BehaviorID,category=SemanticCategory,as=harmful,limit=3",
            f"{xstest}#category=type,limit=3",
        ],
        wrappers=["none", "hypothetical"],
        judge=default_model_path,
        max_new_tokens=24,
    )
    job = jobs.run("eval", config, workspace)
    assert job.progress().status == "done"
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        summary = summarize(store, job.run_id)
    assert len(summary.answers) == 9 * 2 * 2 and summary.judgments["failed"].sum() == 0
    assert set(summary.refusals["label"]) == {"harmful", "benign"}
    default_answers = summary.answers[summary.answers["model"] == "default"]
    assert default_answers["answer"].str.len().gt(0).all()
    print("\n" + summary.refusals.to_string(index=False) + "\n" + summary.ratings.to_string(index=False))


@pytest.mark.processes
def test_cli_runs_shows_and_reports_an_evaluation(tiny_model_path, second_tiny_model_path, tmp_path):
    from .test_cli import cai

    data = tmp_path / "data"
    args = ["eval", "run", "--models", f"base={tiny_model_path}", f"tuned={second_tiny_model_path}"]
    args += ["--sets", "red-team#limit=2", "benign#limit=2", "--wrappers", "none", "prefix-injection"]
    out = cai(*args, "--judge", tiny_model_path, "--max-new-tokens", "6", data=data)
    assert out.returncode == 0, out.stderr
    assert "Win rates" in out.stdout and "Refusal rates" in out.stdout and "Bradley-Terry" in out.stdout
    run_id = re.search(r"^(eval-\w+): done", out.stdout, re.MULTILINE).group(1)
    report = tmp_path / "report.html"
    out = cai("eval", "report", "--run-id", run_id, "--out", "report.html", data=data, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"wrote the report to {report}" in out.stdout  # the full path, wherever the command ran
    assert report.read_text().startswith("<!DOCTYPE html>") and "plotly" in report.read_text()

    bad = cai("eval", "run", "--models", tiny_model_path, "--wrappers", "dan", data=data)
    assert bad.returncode == 2 and "unknown jailbreak wrapper 'dan'" in bad.stderr and "Traceback" not in bad.stderr
    empty = cai("eval", "show", "--run-id", "nothing-here", data=data)
    assert empty.returncode == 2 and "nothing to show" in empty.stderr


def test_refusals_read_by_the_judge_equal_a_direct_scoring(tiny_model_path, second_tiny_model_path, workspace):
    from cai_core.backends import load_backend
    from cai_core.evalsets import refusal_chats

    config = eval_config(tiny_model_path, second_tiny_model_path, refusals="judge", wrappers=["none"])
    job = jobs.run("eval", config, workspace)
    answers = job.read("eval_answers")
    assert len(answers) == 12 and all(0 < a["refusal_p"] < 1 for a in answers)
    assert all(a["refused"] == (a["refusal_p"] > 0.5) for a in answers)
    # the same probability through the backend's general scorer (a full pass per option, no shared prefix)
    judge = load_backend(tiny_model_path, workspace)
    for a in answers[:3]:
        first, second = refusal_chats(a["sent"], a["answer"])
        (a1, b1), (a2, b2) = judge.score_options([first, second], ["A", "B"])
        p_first = math.exp(a1) / (math.exp(a1) + math.exp(b1))
        p_second = math.exp(a2) / (math.exp(a2) + math.exp(b2))
        assert a["refusal_p"] == pytest.approx((p_first + 1 - p_second) / 2, abs=1e-4)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        stored = store.eval_table("eval_answers", job.run_id)
    assert stored["refusal_p"].notna().all() and stored["refused"].sum() == sum(a["refused"] for a in answers)
