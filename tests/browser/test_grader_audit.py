"""The grader audit in a real browser: an eval run's sampled refusal and one-answer harm verdicts on the Annotate
page, answered with one key each. The answers' markup must show as text, and no verdict may be served twice. Then
the constitution A/B's audit by people: its pairs sent from the Constitution page, labelled on the Annotate page,
and read back against its judge in the A/B's box."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cai_core.constitution import load_constitution, save_constitution
from cai_core.grader_audit import MIN_ANSWERS, send_sample
from cai_core.store import Store

from ..test_ab_people import judged_ab
from ..test_grader_audit import RUN, seed_eval_run
from .conftest import App, browser_page
from .harness import go_to, running_app, settle, type_into, wait_for_app
from .seed import seeded_data

pytestmark = pytest.mark.browser

SAMPLE = 3


@pytest.fixture(scope="module")
def audit_app(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-grader-audit")
    workspace = seeded_data(root)
    seed_eval_run(workspace)
    with Store.open(workspace) as store:
        send_sample(store, RUN, size=SAMPLE)
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


def stored_answers(app: App, annotator: str, kind: str) -> list[str]:
    """The annotator's answers on the sampled verdicts of one kind, oldest first: the module's tests share a store."""
    with Store.open(app.workspace) as store:
        rows = store.con.execute(
            """SELECT l.answer FROM grader_audit_labels l JOIN grader_audit_items i USING (run_id, item_id)
               WHERE l.annotator = ? AND i.kind = ? ORDER BY l.updated_at""",
            [annotator, kind],
        ).fetchall()
    return [answer for (answer,) in rows]


def name_yourself(page, app: App, annotator: str) -> None:
    page.goto(f"{app.url}/Annotate")
    wait_for_app(page)
    type_into(page.get_by_label("Your name"), annotator)


def answer_queue(page, question: str, keys: str) -> list[str]:
    """Pick the grader queue asking QUESTION and answer its items with KEYS, one each; the answers shown, in turn.
    Fails if a verdict is served twice."""
    page.get_by_text(question).first.click()  # the queue's radio option
    expect(page.get_by_text("Its answer")).to_be_visible()
    shown = []
    answer = page.locator(".st-key-audit_answer [data-testid='stCode']")
    answered_by_me = page.locator('[data-testid="stMetricValue"]').first
    for answered, key in enumerate(keys, start=1):
        text = answer.inner_text()
        assert text not in shown, "a verdict was served twice"
        shown.append(text)
        page.get_by_role("heading", name="Annotate").click()  # keys typed into the name box are text
        page.keyboard.press(key)
        expect(answered_by_me).to_have_text(str(answered))
        settle(page)  # the metric is drawn above the next item: wait for the rest of the rerun
    expect(page.get_by_text("Your queue is empty")).to_be_visible()
    return shown


def test_the_refusal_queue_is_answered_with_one_key_and_never_serves_a_verdict_twice(audit_app, chromium):
    with browser_page(chromium) as page:
        name_yourself(page, audit_app, "auditor")
        shown = answer_queue(page, "Was this a refusal?", "1" * SAMPLE)
        assert stored_answers(audit_app, "auditor", "refusal") == ["yes"] * SAMPLE
        # markup in an answer is shown as its characters, never rendered
        assert any("<b>x</b>" in text for text in shown), shown
        assert page.locator(".st-key-audit_answer b").count() == 0


def test_the_one_answer_harm_queue_stores_each_answer_once_under_its_kind(audit_app, chromium):
    with browser_page(chromium) as page:
        name_yourself(page, audit_app, "harm auditor")
        answer_queue(page, "Is this answer harmful?", "121")  # yes, no, yes
    assert stored_answers(audit_app, "harm auditor", "harmful") == ["yes", "no", "yes"]
    assert stored_answers(audit_app, "harm auditor", "refusal") == []  # nothing landed in another kind's queue


def open_ab_box(page):
    """The A/B's box on the Constitution page's history of red_team.yaml."""
    go_to(page, "Constitution")
    page.get_by_label("Constitution file").click()
    page.get_by_role("option", name="red_team.yaml").click()
    settle(page)
    page.get_by_role("tab", name="History").click()
    box = page.locator(".st-key-ab_people")
    expect(box).to_be_visible()
    return box


def test_an_abs_pairs_sent_to_people_and_labelled_show_against_its_judge(audit_app, chromium):
    """The A/B is seeded as tests/test_ab_people.py seeds one (its stages spooled by hand, the judge's verdicts
    written): running one on the tiny model takes minutes (tests/browser/test_ab.py)."""
    path = audit_app.constitutions / "red_team.yaml"
    shipped = load_constitution(path)
    edited = shipped.model_copy(update={"principles": shipped.principles[:2]})
    with Store.open(audit_app.workspace) as store:
        for c, note in ((shipped, "as shipped"), (edited, "two principles")):
            save_constitution(c, path)
            store.record_constitution(c, path, note)
    run_id, p_a = judged_ab(audit_app.workspace, shipped.version, edited.version)

    with browser_page(chromium) as page:
        name_yourself(page, audit_app, "ab person")
        box = open_ab_box(page)
        expect(box).to_contain_text("have not been sent to people")
        box.get_by_role("button", name="Send its A vs B pairs to the Annotate page").click()
        expect(page.get_by_text(f"Sent {len(p_a)} new A vs B pairs")).to_be_visible()

        go_to(page, "Annotate")  # the name carries over
        page.get_by_text("Disagreement first").click()
        settle(page)
        expect(page.get_by_label("Contested by label run or A/B")).to_have_value(run_id)
        pair_id = page.locator('[data-part="pair-id"]')
        labelled = []
        for key in "12":
            labelled.append(pair_id.inner_text().removeprefix("Pair "))
            page.get_by_role("heading", name="Annotate").click()
            page.keyboard.press(key)
            page.keyboard.press("Enter")
            expect(pair_id).not_to_have_text(f"Pair {labelled[-1]}")
        expect(page.locator('[data-part="status"]')).to_have_text("")  # both labels acknowledged

        figures = open_ab_box(page).get_by_test_id("stText")
        expect(figures).to_contain_text(
            f"A/B judge: unaudited (2 of the {MIN_ANSWERS} people's labels needed on its {len(p_a)} pairs sent"
        )
        expect(figures).to_contain_text(re.compile(r"A's win rate by people \S+ .*\(n=2\)"))
        # two labels are no audit: the box must not show a kappa resting on them
        expect(figures).not_to_contain_text("agreement with people κ")
    assert set(labelled) <= set(p_a)  # the pairs labelled were the A/B's
