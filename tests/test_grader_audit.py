"""The evaluation's graders audited by people: the seeded sample, its queue, and kappa read back from people's
answers, against sklearn's kappa on the same answers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from streamlit.testing.v1 import AppTest

from cai_core.agreement import cohen_kappa
from cai_core.cli import main
from cai_core.eval_report import report_html, summarize
from cai_core.grader_audit import DEFAULT_SAMPLE, MIN_ANSWERS, agreement_figures, grader_agreement, send_sample
from cai_core.job_folder import JobFolder
from cai_core.records import EvalAnswer, EvalJudgment, to_row
from cai_core.store import GraderLabel, Store
from cai_core.workspace import PROJECT_ROOT, Workspace

from .app_pages import open_page

RUN = "eval-audit"
PROMPTS = 30


def base_refuses_every_third(model: str, i: int) -> bool:
    return model == "base" and i % 3 == 0


def seed_eval_run(
    workspace: Workspace, run_id: str = RUN, prompts: int = PROMPTS, refuses=base_refuses_every_third
) -> None:
    """An eval run of two models on `prompts` harmful prompts: base refuses every third prompt (by phrase), tuned
    never, unless `refuses` says otherwise; the judge finds base's answer better (less harmful) on even prompts,
    tuned's on odd ones."""
    answers, judgments = [], []
    for i in range(prompts):
        key = f"red-team/{i}"
        for model in ("base", "tuned"):
            refused = refuses(model, i)
            text = f"I can't help with that ({model} {i})." if refused else f"Sure, step one ({model} {i}) <b>x</b>"
            answers.append(
                EvalAnswer(
                    run_id,
                    key,
                    "none",
                    model,
                    "red-team",
                    f"prompt {i}",
                    f"sent {i}",
                    "",
                    "harmful",
                    text,
                    refused,
                    5,
                    0.1,
                )
            )
        p_a = 0.8 if i % 2 == 0 else 0.2
        judgments.append(
            EvalJudgment(
                run_id, key, "none", "harmlessness", "base", "tuned", "harm", p_a, p_a, p_a, False, "judge", "v1"
            )
        )
    job = JobFolder.create(
        workspace.runs_dir, run_id, {"kind": "eval", "model": "judge", "config": {"refusals": "phrases"}}
    )
    job.append("eval_answers", [to_row(a) for a in answers])
    job.append("eval_judgments", [to_row(j) for j in judgments])
    job.set_progress("done", 1, 1)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    workspace = Workspace(tmp_path / "data")
    seed_eval_run(workspace)
    return workspace


def answer_all(store: Store, annotator: str, kind: str, answer_for, overlap: int = 1) -> list[str]:
    """Answer every item the queue hands this annotator, in order; returns the items' ids."""
    seen = []
    while (item := store.claim_grader_item(annotator, RUN, kind, overlap=overlap)) is not None:
        assert item.item_id not in seen, "the queue handed the same item out twice"
        seen.append(item.item_id)
        store.save_grader_label(GraderLabel(RUN, item.item_id, annotator, item.stored_answer(answer_for(item))))
    return seen


def test_the_sample_is_seeded_nested_and_leaves_out_what_is_no_verdict(ws):
    with Store.open(ws) as store:
        assert send_sample(store, RUN, size=10, seed=3) == {"refusal": 10, "harm": 10, "harmful": 10}
        first = set(store.con.execute("SELECT item_id FROM grader_audit_items").df()["item_id"])
        assert send_sample(store, RUN, size=10, seed=3) == {"refusal": 0, "harm": 0, "harmful": 0}  # the same ten again
        assert send_sample(store, RUN, size=500, seed=3) == {
            "refusal": 2 * PROMPTS - 10,
            "harm": PROMPTS - 10,
            "harmful": 2 * PROMPTS - 10,
        }
        everything = set(store.con.execute("SELECT item_id FROM grader_audit_items").df()["item_id"])
        assert first < everything
        with pytest.raises(KeyError, match="no comparison run 'nope'"):
            send_sample(store, "nope")
    other = Workspace(ws.root.parent / "other")
    seed_eval_run(other)
    with Store.open(other) as store:
        send_sample(store, RUN, size=10, seed=4)
        assert set(store.con.execute("SELECT item_id FROM grader_audit_items").df()["item_id"]) != first


def sampled_verdicts(store: Store, kind: str = "refusal") -> dict[str, str]:
    """The sampled items of a kind, each with the grader's verdict on it."""
    rows = store.con.execute(
        """SELECT i.item_id, a.refused FROM grader_audit_items i JOIN eval_answers a ON a.run_id = i.run_id
           AND a.prompt_key = i.prompt_key AND a.wrapper = i.wrapper AND a.model = i.model_a WHERE i.kind = ?""",
        [kind],
    ).fetchall()
    return {item: "yes" if refused else "no" for item, refused in rows}


def test_a_rare_verdict_gets_its_share_of_the_sample_and_a_larger_sample_holds_the_smaller(tmp_path):
    # 2% refusals: 20 of 1000 answers; a plain 40-item sample would hold about one
    small, large = Workspace(tmp_path / "small"), Workspace(tmp_path / "large")
    for workspace in (small, large):
        seed_eval_run(workspace, prompts=500, refuses=lambda model, i: model == "base" and i % 25 == 0)
    with Store.open(small) as store:
        assert send_sample(store, RUN, size=40, seed=5)["refusal"] == 40
        forty = sampled_verdicts(store)
        assert list(forty.values()).count("yes") == 20
        harm = store.con.execute("SELECT model_a, model_b FROM grader_audit_items WHERE kind = 'harm'").df()
        assert len(harm) == 40
        send_sample(store, RUN, size=60, seed=5)
        sixty = sampled_verdicts(store)
    with Store.open(large) as store:
        send_sample(store, RUN, size=60, seed=5)
        assert sampled_verdicts(store) == sixty  # the same items, sampled at once or in two steps
        # once the refusals run out, the other verdict fills the sample
        send_sample(store, RUN, size=100, seed=5)
        assert list(sampled_verdicts(store).values()).count("yes") == 20 and len(sampled_verdicts(store)) == 100
    assert set(forty) < set(sixty) and list(sixty.values()).count("yes") == 20


def test_the_weighted_agreement_recovers_the_runs_own_kappa_where_the_plain_one_does_not():
    # a grader that refuses on 2% of 5000 answers; people call 75% of its refusals refusals, and 5% of the rest
    population = np.array([[75.0, 245.0], [25.0, 4655.0]])  # rows people (yes, no), columns the grader (yes, no)
    shares = population.sum(0) / population.sum()
    truth_kappa, truth_agreement = cohen_kappa(population), population.trace() / population.sum()
    people = np.repeat([0, 1, 0, 1], population.T.ravel().astype(int))  # per item, grader's column by column
    grader = np.repeat([0, 1], population.sum(0).astype(int))
    rng = np.random.default_rng(0)
    weighted, plain, covered = [], [], 0
    for _ in range(400):  # 50 of each verdict, as the sample draws them
        drawn = np.concatenate([rng.choice(np.flatnonzero(grader == g), 50, replace=False) for g in (0, 1)])
        confusion = np.zeros((2, 2))
        np.add.at(confusion, (people[drawn], grader[drawn]), 1)
        agreement, kappa = agreement_figures(confusion, shares)
        weighted.append((agreement.value, kappa.value))
        plain.append(cohen_kappa(confusion))
        covered += kappa.low <= truth_kappa <= kappa.high
    agreement_mean, kappa_mean = np.mean(weighted, axis=0)
    assert agreement_mean == pytest.approx(truth_agreement, abs=0.005)  # unbiased
    # consistent, not unbiased: a ratio of unbiased cells leans +0.05 here at 50 answers a verdict
    assert kappa_mean == pytest.approx(truth_kappa, abs=0.08)
    assert abs(np.mean(plain) - truth_kappa) > 0.3  # the sample's own mix describes another run
    assert covered / 400 >= 0.9


def test_the_queue_hands_each_item_out_once_per_annotator_up_to_the_overlap(ws):
    with Store.open(ws) as store:
        send_sample(store, RUN, size=8)
        first = store.claim_grader_item("ann", RUN, "refusal", overlap=2)
        assert store.claim_grader_item("ann", RUN, "refusal", overlap=2) == first  # held until answered
        assert store.claim_grader_item("bo", RUN, "refusal", overlap=1).item_id != first.item_id  # ann holds it
        assert len(answer_all(store, "ann", "refusal", lambda item: "yes", overlap=2)) == 8
        assert len(answer_all(store, "bo", "refusal", lambda item: "no", overlap=2)) == 8
        assert answer_all(store, "cy", "refusal", lambda item: "no", overlap=2) == []  # every item has two answers
        assert store.grader_audit_progress("ann", RUN, "refusal", overlap=2) == {
            "sampled": 8,
            "answered": 8,
            "remaining": 0,
        }
        with pytest.raises(ValueError, match="answer 'a' on a refusal verdict"):
            store.save_grader_label(GraderLabel(RUN, first.item_id, "ann", "a"))


def test_kappa_is_read_from_peoples_answers_and_a_grader_below_the_minimum_is_unaudited(ws):
    with Store.open(ws) as store:
        send_sample(store, RUN, size=PROMPTS)
        before = grader_agreement(store, RUN)
        assert not before["refusal"].audited and "unaudited grader (0 of the 20" in str(before["refusal"])
        # people call refusal what the phrase found, and also the tuned answers to every fifth prompt
        truth, grader = [], []

        def person(item):
            phrase = item.left.startswith("I can't")
            says = phrase or (" 5)" in item.left or "tuned 10)" in item.left)
            truth.append("yes" if says else "no")
            grader.append("yes" if phrase else "no")
            return truth[-1]

        answer_all(store, "ann", "refusal", person)
        # on harm, people side with the judge on all but the first five prompts it rated
        harm_people, harm_judge = [], []

        def harm_person(item):
            more_harmful = "b" if int(item.prompt.split()[1]) % 2 == 0 else "a"  # the judge's verdict
            answer = more_harmful if len(harm_judge) >= 5 else {"a": "b", "b": "a"}[more_harmful]
            harm_judge.append(more_harmful)
            harm_people.append(answer)
            shown = {"a": "b", "b": "a"}[answer] if item.shown_swapped else answer
            assert item.stored_answer(shown) == answer
            return shown

        answer_all(store, "ann", "harm", harm_person)
        after = grader_agreement(store, RUN)
    refusal, harm = after["refusal"], after["harm"]
    assert refusal.audited and refusal.answers == len(truth) >= MIN_ANSWERS
    # the sample holds all 10 refusals of the run's 60 answers and 20 of its 50 others: each item counts for its
    # verdict's share of the run over its verdict's count in the sample
    weight = {"yes": 10 / 60 / grader.count("yes"), "no": 50 / 60 / grader.count("no")}
    assert grader.count("yes") == 10
    weighted = cohen_kappa_score(truth, grader, sample_weight=[weight[verdict] for verdict in grader])
    assert refusal.kappa.value == pytest.approx(weighted)
    assert refusal.kappa.value != pytest.approx(cohen_kappa_score(truth, grader))
    assert refusal.kappa.low < refusal.kappa.value < refusal.kappa.high
    assert refusal.grader == "refusal by phrase"
    assert str(refusal).startswith("refusal by phrase: agreement with people κ")
    assert harm.kappa.value == pytest.approx(cohen_kappa_score(harm_people, harm_judge)) and harm.kappa.value < 1
    assert harm.answers == PROMPTS


def test_one_answer_throughout_leaves_kappa_undefined_not_graded(ws):
    with Store.open(ws) as store:
        send_sample(store, RUN, size=PROMPTS)
        answer_all(store, "ann", "harm", lambda item: "b" if item.shown_swapped else "a")  # model_a's throughout
        answer_all(store, "bo", "refusal", lambda item: "skip")  # skips take no side: no answers
        answer_all(store, "cy", "harm", lambda item: "same", overlap=2)
        agreement = grader_agreement(store, RUN)
    assert agreement["refusal"].answers == 0
    assert agreement["harm"].answers == PROMPTS and agreement["harm"].kappa.low is None
    assert "kappa undefined" in str(agreement["harm"])


# --- the pages ------------------------------------------------------------------------------------------


@pytest.fixture
def page_ws(ws, monkeypatch) -> Workspace:
    monkeypatch.setenv("CAI_DATA_DIR", str(ws.root))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(PROJECT_ROOT / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    return ws


def grader_captions(at: AppTest) -> list[str]:
    """The captions naming a figure's grader, as the reader sees them (the markdown escapes undone)."""
    shown = [re.sub(r"\\(.)", r"\1", caption.value) for caption in at.caption]
    return [text for text in shown if text.startswith("Grader: ")]


def shown_code(at: AppTest) -> list[str]:
    return [block.value for block in at.code]


def test_the_annotate_page_serves_the_refusal_queue_and_stores_each_answer(page_ws):
    with Store.open(page_ws) as store:
        send_sample(store, RUN, size=3)
    at = open_page("pages/5_Annotate.py")
    at.text_input(key="annotator").input("ann").run()
    at.radio(key="label_queue").set_value("refusal").run()
    assert not at.exception, at.exception
    assert any("Was this a refusal?" in md.value for md in at.markdown)
    answered = []
    for _ in range(3):
        [answer] = [text for text in shown_code(at) if "step one" in text or "can't help" in text]
        answered.append(answer)
        at.button(key="audit_yes").click().run()
        assert not at.exception, at.exception
    assert len(set(answered)) == 3  # never the same verdict twice
    assert any("Your queue is empty" in s.value for s in at.success)
    # the answers' HTML is shown as text, never rendered
    assert all("<b>" not in md.value for md in at.markdown)
    with Store.open(page_ws) as store:
        stored = store.con.execute("SELECT annotator, answer FROM grader_audit_labels").fetchall()
    assert stored == [("ann", "yes")] * 3


def test_the_evaluate_page_shows_each_graders_kappa_or_that_it_is_unaudited(page_ws):
    at = open_page("pages/7_Evaluate.py")
    captions = grader_captions(at)
    assert any("refusal by phrase: unaudited grader" in c for c in captions), captions
    assert any("harm by judge: unaudited grader" in c for c in captions), captions
    at.button(key="audit_send").click().run()
    assert not at.exception, at.exception
    with Store.open(page_ws) as store:
        assert store.grader_audit_progress("ann", RUN, "refusal")["sampled"] == DEFAULT_SAMPLE
        answer_all(store, "ann", "refusal", lambda item: "yes" if item.left.startswith("I can't") else "no")
    at.run()
    captions = grader_captions(at)
    refusal = [c for c in captions if "refusal by phrase" in c]
    assert refusal and "κ 1.00" in refusal[0] and "unaudited" not in refusal[0], refusal
    assert any("harm by judge: unaudited grader" in c for c in captions)  # nobody answered the harm queue


def test_the_cli_sends_a_sample_and_the_report_and_show_name_each_figures_grader(ws, capsys):
    data = ["--data-dir", str(ws.root)]
    assert main([*data, "eval", "audit", "--run-id", RUN, "--size", "25"]) == 0
    out = capsys.readouterr().out
    assert "sent 25 refusal, 25 harm and 25 one-answer harm verdicts" in out
    assert "refusal by phrase: unaudited grader (0 of the 20" in out
    with Store.open(ws) as store:
        answer_all(store, "ann", "harm", lambda item: "b" if int(item.prompt.split()[1]) % 2 == 0 else "a")
        summary = summarize(store, RUN)
    assert main([*data, "eval", "show", "--run-id", RUN]) == 0
    shown = capsys.readouterr().out
    assert "Refusal rates" in shown and "Grader: refusal by phrase: unaudited grader" in shown
    assert "Win rates" in shown and "Grader: harm by judge: agreement with people" in shown
    page = report_html(summary)
    assert "<b>Grader</b>: harm by judge: agreement with people" in page
    assert "<b>Grader</b>: refusal by phrase: unaudited grader" in page


def test_is_this_answer_harmful_is_asked_of_one_answer_and_read_back_as_its_own_agreement(ws):
    with Store.open(ws) as store:
        # every answer the judge compared on harm is a verdict: 60 answers, half of them the more harmful one
        assert send_sample(store, RUN, size=PROMPTS)["harmful"] == PROMPTS
        assert send_sample(store, RUN, size=500)["harmful"] == PROMPTS
        people, judge = [], []

        def person(item):
            assert item.right == "" and item.left  # one answer, as the refusal question shows it
            model, prompt = item.left.split("(")[1].split(")")[0].split()
            # the judge found base's answer better on even prompts: the other one is its "harmful" answer
            verdict = "yes" if (model == "base") == (int(prompt) % 2 == 1) else "no"
            judge.append(verdict)
            people.append(verdict if len(people) >= 6 else {"yes": "no", "no": "yes"}[verdict])
            return people[-1]

        answered = answer_all(store, "ann", "harmful", person)
        stored = store.con.execute(
            "SELECT count(*) FROM grader_audit_labels l JOIN grader_audit_items i USING (run_id, item_id) "
            "WHERE i.kind = 'harmful'"
        ).fetchone()[0]
        agreement = grader_agreement(store, RUN)
        summary = summarize(store, RUN)
    assert len(answered) == stored == 2 * PROMPTS and judge.count("yes") == PROMPTS
    harmful = agreement["harmful"]
    assert harmful.audited and harmful.answers == 2 * PROMPTS
    # the sample is the whole run here: its kappa is the plain one
    assert harmful.kappa.value == pytest.approx(cohen_kappa_score(people, judge)) and harmful.kappa.value < 1
    assert str(harmful).startswith("harm by judge, one answer: agreement with people κ")
    assert agreement["harm"].answers == 0  # the pairwise question is a queue of its own
    note = summary.grader_notes()["win_rate_harmlessness"]
    assert "one answer: agreement with people κ" in note and "harm by judge: unaudited grader" in note


def test_the_annotate_page_asks_is_this_answer_harmful_of_one_answer(page_ws):
    with Store.open(page_ws) as store:
        send_sample(store, RUN, size=2)
    at = open_page("pages/5_Annotate.py")
    at.text_input(key="annotator").input("ann").run()
    at.radio(key="label_queue").set_value("harmful").run()
    assert not at.exception, at.exception
    assert any("Is this answer harmful?" in md.value for md in at.markdown)
    assert not any("Answer B" in md.value for md in at.markdown)  # one answer, not two side by side
    [answer] = [text for text in shown_code(at) if "step one" in text or "can't help" in text]
    at.button(key="audit_yes").click().run()
    assert not at.exception, at.exception
    with Store.open(page_ws) as store:
        stored = store.con.execute(
            "SELECT i.kind, l.answer FROM grader_audit_labels l JOIN grader_audit_items i USING (run_id, item_id)"
        ).fetchall()
    assert stored == [("harmful", "yes")] and answer
