"""Annotating and reading the agreement in a real browser: keys 1-5 and Enter on the Annotate page, the
hidden side swaps as DuckDB stores them, two annotators at once, and the Agreement page's figures.

The app has its own data: the seeded traces plus 30 pairs with an AI label run over them. The tests share
that server, so each uses its own annotator names and compares figures before and after, not absolutes.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect

from cai_core.agreement import dashboard
from cai_core.records import HumanLabel
from cai_core.store import Store

from .conftest import App, browser_page
from .harness import running_app, settle, type_into, wait_for_app
from .seed import SEED_LABEL_RUN, seed_pairs, seeded_data

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def rlaif_app(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-rlaif")
    workspace = seeded_data(root)
    seed_pairs(workspace, root / "constitutions" / "hhh.yaml")
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


@pytest.fixture
def new_page(chromium):
    """Pages in fresh browser contexts: each its own Streamlit session, as two people's browsers are."""
    with ExitStack() as pages:
        yield lambda: pages.enter_context(browser_page(chromium))


@dataclass(frozen=True)
class Shown:
    pair_id: str
    left: str  # the text the page put under "Response A"


def open_annotate(page, app: App, annotator: str, overlap: int | None = None) -> None:
    page.goto(f"{app.url}/Annotate")
    wait_for_app(page)
    # the name last: the panel is drawn only once there is a name, so the panel waited for below is one drawn after
    # every field's rerun (a key pressed while a later rerun redrew it with another pair was lost, under load)
    fields = [(page.get_by_label("Your name"), annotator)]
    if overlap is not None:
        fields.insert(0, (page.get_by_label("Labels wanted per pair"), str(overlap)))
    for field, value in fields:
        type_into(field, value)
    expect(page.locator('[data-part="left"]')).to_be_visible()
    # keys typed into a text box are text, not shortcuts: move the focus off the name field
    page.get_by_role("heading", name="Annotate").click()


def shown(page) -> Shown:
    caption = page.get_by_text(re.compile(r"^Pair seed-pair-\d+$"))
    return Shown(caption.inner_text().removeprefix("Pair "), page.locator('[data-part="left"]').inner_text())


def press(page, key: str) -> None:
    page.keyboard.press(key)
    settle(page)


def label_with_keys(page, key: str) -> Shown:
    """Choose with KEY, then save with Enter; returns the pair that was on screen."""
    on_screen = shown(page)
    press(page, key)
    expect(page.get_by_text("Enter saves it.")).to_be_visible()
    press(page, "Enter")
    expect(page.get_by_text(f"on pair {on_screen.pair_id}.")).to_be_visible()
    return on_screen


def stored_labels(app: App, annotator: str) -> dict:
    with Store.open(app.workspace) as store:
        return {label.pair_id: label for label in store.human_labels(annotator=annotator)}


def agreement_metric(page):
    return page.get_by_test_id("stMetric").filter(has_text="Agreement (no ties)")


def no_error_on(page) -> None:
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_five_pairs_annotated_with_the_keyboard_update_the_agreement_page(rlaif_app, new_page):
    page = new_page()
    page.goto(f"{rlaif_app.url}/Agreement")
    wait_for_app(page)
    before = int(agreement_metric(page).get_by_test_id("stMetricDelta").inner_text().split()[0])

    open_annotate(page, rlaif_app, "five")
    press(page, "Enter")  # nothing chosen yet: Enter must not save anything
    assert stored_labels(rlaif_app, "five") == {}
    labelled = [label_with_keys(page, "1").pair_id for _ in range(5)]
    expect(page.get_by_test_id("stMetric").filter(has_text="Labelled by you")).to_contain_text("5")
    stored = stored_labels(rlaif_app, "five")
    assert sorted(stored) == sorted(labelled)
    # "1" is "A is better": the left side, which is response_b wherever the sides were swapped
    assert all(label.choice == ("b" if label.shown_swapped else "a") for label in stored.values())

    page.goto(f"{rlaif_app.url}/Agreement")
    wait_for_app(page)
    with Store.open(rlaif_app.workspace) as store:
        row = dashboard(store, run_id=SEED_LABEL_RUN).by_run.iloc[0]
    metric = agreement_metric(page)
    expect(metric.get_by_test_id("stMetricDelta")).to_have_text(f"{before + 5} labels")
    expect(metric.get_by_test_id("stMetricValue")).to_have_text(f"{row.agreement:.3f}")
    no_error_on(page)


def test_hidden_sides_are_randomised_per_annotator_and_stored_as_shown(rlaif_app, new_page):
    seen: dict[str, list[Shown]] = {}
    for annotator in ("sides-ann", "sides-bo"):
        page = new_page()
        # room for both on every pair, so that the second is offered the pairs the first labelled
        open_annotate(page, rlaif_app, annotator, overlap=10)
        seen[annotator] = [label_with_keys(page, "2") for _ in range(5)]
        expect(page.get_by_text("Response A", exact=True)).to_be_visible()
        # the page names the sides A and B only; which response is which stays hidden
        expect(page.get_by_text(re.compile("response_a|response_b|swapped"))).to_have_count(0)

    with Store.open(rlaif_app.workspace) as store:
        pairs = {p.pair_id: p for p in store.pairs(limit=1000)}
    swaps: dict[str, dict[str, bool]] = {}
    for annotator, shown_pairs in seen.items():
        stored = stored_labels(rlaif_app, annotator)
        for item in shown_pairs:
            pair = pairs[item.pair_id]
            assert item.left in (pair.response_a, pair.response_b)
            swapped = item.left == pair.response_b
            assert stored[item.pair_id].shown_swapped == swapped  # what DuckDB holds is what the browser showed
            assert stored[item.pair_id].choice == ("a" if swapped else "b")  # "2": B, the right side
            swaps.setdefault(item.pair_id, {})[annotator] = swapped
    every_swap = [s for per_pair in swaps.values() for s in per_pair.values()]
    assert True in every_swap and False in every_swap  # both orientations occur
    both = [per_pair for per_pair in swaps.values() if len(per_pair) == 2]
    assert both, "the second annotator's queue should offer the pairs the first one labelled"
    assert any(per_pair["sides-ann"] != per_pair["sides-bo"] for per_pair in both)  # per person, not per pair


def test_two_annotators_at_the_same_time_lose_no_label(rlaif_app, new_page):
    pages = {"con-ann": new_page(), "con-bo": new_page()}
    for annotator, page in pages.items():
        # three labels wanted per pair: the pairs an earlier test labelled once stay open to both of them, however
        # their claims interleave, so that they do work on the same pairs at the same time
        open_annotate(page, rlaif_app, annotator, overlap=3)
    submitted: dict[str, list[str]] = {annotator: [] for annotator in pages}
    for round_ in range(4):
        on_screen = {annotator: shown(page) for annotator, page in pages.items()}
        # both choose, then both save, each without waiting for the other's page
        for page in pages.values():
            page.keyboard.press(str(round_ % 4 + 1))
        for page in pages.values():
            settle(page)
            expect(page.get_by_text("Enter saves it.")).to_be_visible()
        for page in pages.values():
            page.keyboard.press("Enter")
        for annotator, page in pages.items():
            settle(page)
            expect(page.get_by_text(f"on pair {on_screen[annotator].pair_id}.")).to_be_visible()
            submitted[annotator].append(on_screen[annotator].pair_id)
    for annotator, page in pages.items():
        assert sorted(stored_labels(rlaif_app, annotator)) == sorted(submitted[annotator])
        no_error_on(page)
    assert set(submitted["con-ann"]) & set(submitted["con-bo"]), "they should have labelled some pairs in common"


def verdict_headline(page):
    return page.get_by_text(re.compile(r"^The judge is "))


def test_the_verdict_shows_and_changes_when_labels_change(rlaif_app, new_page):
    page = new_page()
    page.goto(f"{rlaif_app.url}/Agreement")
    wait_for_app(page)
    with Store.open(rlaif_app.workspace) as store:
        before = dashboard(store, run_id=SEED_LABEL_RUN).verdict
        judged = store.con.execute("SELECT pair_id, p_a FROM ai_labels WHERE run_id = ?", [SEED_LABEL_RUN]).fetchall()
    expect(verdict_headline(page)).to_have_text(before.headline())

    # a person contradicts the judge on every pair it judged: its agreement with people collapses
    contradicting = [HumanLabel(pair_id, "verdict-contrarian", "b" if p_a > 0.5 else "a") for pair_id, p_a in judged]
    with Store.open(rlaif_app.workspace) as store:
        store.import_human_labels(contradicting)
        after = dashboard(store, run_id=SEED_LABEL_RUN).verdict
    assert after.headline() != before.headline()
    assert next(s for s in after.signals if s.name == "agreement with people").grade == "poor"

    page.reload()
    wait_for_app(page)
    expect(verdict_headline(page)).to_have_text(after.headline())
    assert after.name == "unreliable"
    no_error_on(page)
