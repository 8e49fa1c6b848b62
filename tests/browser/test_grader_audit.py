"""The grader audit in a real browser: an eval run's sampled refusal verdicts on the Annotate page, answered with
one key each. The answers' markup must show as text, and no verdict may be served twice."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from cai_core.grader_audit import send_sample
from cai_core.store import Store

from ..test_grader_audit import RUN, seed_eval_run
from .conftest import App, browser_page
from .harness import running_app, settle, wait_for_app
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


def stored_answers(app: App) -> list[tuple[str, str]]:
    with Store.open(app.workspace) as store:
        return store.con.execute("SELECT item_id, answer FROM grader_audit_labels ORDER BY updated_at").fetchall()


def test_the_refusal_queue_is_answered_with_one_key_and_never_serves_a_verdict_twice(audit_app, chromium):
    with browser_page(chromium) as page:
        page.goto(f"{audit_app.url}/Annotate")
        wait_for_app(page)
        name = page.get_by_label("Your name")
        name.fill("auditor")
        name.press("Enter")
        settle(page)
        page.get_by_text("Was this a refusal?").first.click()  # the queue's radio option
        expect(page.get_by_text("Its answer")).to_be_visible()
        shown = []
        answer = page.locator(".st-key-audit_answer [data-testid='stCode']")
        answered_by_me = page.locator('[data-testid="stMetricValue"]').first
        for answered in range(1, SAMPLE + 1):
            text = answer.inner_text()
            assert text not in shown, "a verdict was served twice"
            shown.append(text)
            page.get_by_role("heading", name="Annotate").click()  # keys typed into the name box are text
            page.keyboard.press("1")
            expect(answered_by_me).to_have_text(str(answered))
        expect(page.get_by_text("Your queue is empty")).to_be_visible()
        assert [answer for _, answer in stored_answers(audit_app)] == ["yes"] * SAMPLE
        # markup in an answer is shown as its characters, never rendered
        assert any("<b>x</b>" in text for text in shown), shown
        assert page.locator(".st-key-audit_answer b").count() == 0
