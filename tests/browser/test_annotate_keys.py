"""The Annotate page's key press in a real browser: the next pair shows without a server round trip.

The test holds every message the page sends the server (Playwright's WebSocket routing), so nothing the page
shows after a key press can have come from a rerun: the labelling panel (ui/label_keys.py) must draw the next
pair from the look-ahead the server handed it. Released, the messages reach the server, which stores each
label exactly once. The first pair's text is hostile markup, which must show as text and run nothing.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cai_core.jobs import JobFolder
from cai_core.records import Pair, shown_swapped
from cai_core.store import Store

from .conftest import App, browser_page
from .harness import go_to, running_app, settle, type_into, wait_for_app
from .seed import seed_pair_texts, seeded_data

pytestmark = pytest.mark.browser

HOSTILE = Pair(
    "hostile-pair",
    "<img src=x onerror=\"window.__pwned = 'img'\"> <script>window.__pwned = 'script'</script> **not bold**",
    "<b>not bold</b> <img src=x onerror=\"window.__pwned = 'left'\">",
    "<script>window.__pwned = 'right'</script>",
    "import",
    "a-hostile-file",  # sorts before the seeded pairs: the queue's first pair
    0,
    "chosen",
    "rejected",
)


@pytest.fixture(scope="module")
def keys_app(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-annotate-keys")
    workspace = seeded_data(root)
    with Store.open(workspace) as store:
        store.add_pairs([HOSTILE, *seed_pair_texts(20)])
    with running_app(workspace.root, root / "constitutions", root / "streamlit.log") as url:
        yield App(url, workspace, root / "constitutions")


# In the page: each pair's caption, as the pair on screen changes. With the socket held, every change is the
# browser's own doing: that is the proof of no round trip, without timing anything on a busy machine.
WATCH_PAIRS = """() => {
  window.__shown = [];
  const panel = document.querySelector('[data-testid="stBidiComponentIsolated"]').shadowRoot;
  const caption = panel.querySelector('[data-part="pair-id"]');
  new MutationObserver(() => {
    window.__shown.push(caption.textContent);
  }).observe(caption, { childList: true, characterData: true, subtree: true });
}"""


class HeldSocket:
    """Routes the page's WebSocket to the server, holding what the page sends while `hold` is on."""

    def __init__(self, page):
        self.hold = False
        self.held: list = []
        self.server = None
        page.route_web_socket(re.compile(r"/_stcore/stream"), self._route)

    def _route(self, socket) -> None:
        self.server = socket.connect_to_server()
        socket.on_message(lambda message: self.held.append(message) if self.hold else self.server.send(message))

    def release(self) -> None:
        self.hold = False
        for message in self.held:
            self.server.send(message)
        self.held.clear()


@pytest.fixture
def page(chromium):
    with browser_page(chromium) as page:
        yield page


def part(page, name: str):
    return page.locator(f'[data-part="{name}"]')


def open_annotate(page, app: App, annotator: str) -> None:
    page.goto(f"{app.url}/Annotate")
    wait_for_app(page)
    type_into(page.get_by_label("Your name"), annotator)
    expect(part(page, "pair-id")).to_be_visible()
    # keys typed into a text box are text, not shortcuts: move the focus off the name field
    page.get_by_role("heading", name="Annotate").click()


def stored(app: App, annotator: str) -> dict:
    with Store.open(app.workspace) as store:
        return {label.pair_id: label for label in store.human_labels(annotator=annotator)}


def test_pair_text_is_shown_as_text_and_runs_nothing(keys_app, page):
    open_annotate(page, keys_app, "reader")
    expect(part(page, "pair-id")).to_have_text(f"Pair {HOSTILE.pair_id}")
    swapped = shown_swapped("reader", HOSTILE.pair_id)
    left, right = (HOSTILE.response_b, HOSTILE.response_a) if swapped else (HOSTILE.response_a, HOSTILE.response_b)
    expect(part(page, "prompt")).to_have_text(HOSTILE.prompt)
    expect(part(page, "left")).to_have_text(left)
    expect(part(page, "right")).to_have_text(right)
    assert page.locator(".label-keys img, .label-keys b, .label-keys pre script").count() == 0
    assert page.evaluate("window.__pwned") is None

    # Enter on another control of the page is that control's, not a save
    page.keyboard.press("1")
    page.locator("summary").filter(has_text="Your labels").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("Re-open one of your labels to change it")).to_be_visible()
    expect(part(page, "pair-id")).to_have_text(f"Pair {HOSTILE.pair_id}")
    expect(part(page, "hint")).to_have_text("Your choice: A is better. Enter saves it.")

    # the panel's buttons, for a mouse: choose, then submit
    page.get_by_role("button", name="B is better").click()
    expect(part(page, "hint")).to_have_text("Your choice: B is better. Enter saves it.")
    page.get_by_role("button", name="Submit").click()
    expect(part(page, "pair-id")).not_to_have_text(f"Pair {HOSTILE.pair_id}")
    expect(part(page, "status")).to_have_text("")
    [label] = stored(keys_app, "reader").values()
    assert (label.pair_id, label.choice) == (HOSTILE.pair_id, "a" if swapped else "b")
    assert page.evaluate("window.__pwned") is None


def test_three_key_presses_show_the_next_pairs_at_once_and_store_three_labels(keys_app, page):
    socket = HeldSocket(page)
    open_annotate(page, keys_app, "quick")
    part(page, "rationale").press_sequentially("typed 1 and 2 here: text, not choices")
    expect(part(page, "hint")).to_contain_text("Choose with 1")  # the keys typed into the box chose nothing
    page.get_by_role("heading", name="Annotate").click()
    page.evaluate(WATCH_PAIRS)
    socket.hold = True  # from here the server hears nothing until released
    labelled = {}
    for key, choice in (("1", "a"), ("2", "b"), ("3", "tie")):
        on_screen = part(page, "pair-id").inner_text().removeprefix("Pair ")
        page.keyboard.press(key)
        expect(part(page, "hint")).to_contain_text("Enter saves it.")
        page.keyboard.press("Enter")
        now_shown = part(page, "pair-id").inner_text()  # read at once: no waiting for a change
        assert now_shown != f"Pair {on_screen}" and part(page, "pair-id").is_visible()
        labelled[on_screen] = choice
    page.wait_for_function("window.__shown.length >= 3")
    assert page.evaluate("window.__shown") == [f"Pair {p}" for p in [*labelled][1:]] + [now_shown]
    assert socket.held, "the labels should be waiting in the held messages"
    assert stored(keys_app, "quick") == {}  # nothing reached the server
    expect(part(page, "status")).to_have_text("Saving 3 labels…")

    # two more run the look-ahead (5 pairs) out: the panel says it is loading rather than show a stale pair
    for _ in range(2):
        labelled[part(page, "pair-id").inner_text().removeprefix("Pair ")] = "a"
        page.keyboard.press("1")
        page.keyboard.press("Enter")
    expect(part(page, "loading")).to_be_visible()
    expect(part(page, "pair")).to_be_hidden()
    page.keyboard.press("2")
    page.keyboard.press("Enter")  # with no pair on screen, keys label nothing

    socket.release()
    expect(part(page, "status")).to_have_text("")  # every label acknowledged
    expect(part(page, "pair-id")).not_to_have_text(re.compile("|".join(map(re.escape, labelled))))
    # the keys still work after the server's redraws (each redraw hands the panel new data): the last one ended
    settle(page)
    on_screen = part(page, "pair-id").inner_text().removeprefix("Pair ")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    assert part(page, "pair-id").inner_text() != f"Pair {on_screen}"
    labelled[on_screen] = "b"
    expect(part(page, "status")).to_have_text("")
    page.reload()
    wait_for_app(page)
    labels = stored(keys_app, "quick")
    assert labels.keys() == labelled.keys()  # exactly these, once each
    for pair_id, choice in labelled.items():
        label = labels[pair_id]
        # 1 is the left side, 2 the right: in the pair's own terms, flipped where this annotator saw it swapped
        expected = {"a": "b", "b": "a"}.get(choice, choice) if label.shown_swapped else choice
        assert (label.choice, label.rationale) == (
            expected,
            "typed 1 and 2 here: text, not choices" if pair_id == HOSTILE.pair_id else "",
        )


def test_labels_the_server_never_heard_of_are_sent_again_after_a_reload(keys_app, page):
    socket = HeldSocket(page)
    open_annotate(page, keys_app, "reloader")
    socket.hold = True
    labelled = {}
    for key, choice in (("1", "a"), ("2", "b")):
        labelled[part(page, "pair-id").inner_text().removeprefix("Pair ")] = choice
        page.keyboard.press(key)
        page.keyboard.press("Enter")
    expect(part(page, "status")).to_have_text("Saving 2 labels…")
    socket.held.clear()  # the messages that carried them are lost with the connection
    socket.hold = False
    page.reload()
    open_annotate(page, keys_app, "reloader")  # a reload is a new session: the name is asked again
    expect(part(page, "status")).to_have_text("")
    labels = stored(keys_app, "reloader")
    assert labels.keys() == labelled.keys()
    for pair_id, choice in labelled.items():
        label = labels[pair_id]
        assert label.choice == ({"a": "b", "b": "a"}[choice] if label.shown_swapped else choice)
    expect(part(page, "pair-id")).not_to_have_text(re.compile("|".join(map(re.escape, labelled))))
    errors = page.get_by_test_id("stAlertContentError")
    assert errors.count() == 0, errors.all_inner_texts()


def test_labels_made_under_another_name_wait_in_the_tab_until_the_name_is_set_back(keys_app, page):
    socket = HeldSocket(page)
    open_annotate(page, keys_app, "before")
    socket.hold = True
    labelled = []
    for key in ("1", "2", "3"):
        labelled.append(part(page, "pair-id").inner_text().removeprefix("Pair "))
        page.keyboard.press(key)
        page.keyboard.press("Enter")
    expect(part(page, "status")).to_have_text("Saving 3 labels…")
    socket.held.clear()  # lost with the connection: the server restarts, the tab comes back
    socket.hold = False
    page.reload()
    open_annotate(page, keys_app, "after")  # under another name
    expect(part(page, "waiting")).to_contain_text('3 labels made as "before" have not reached the server')
    expect(part(page, "status")).to_have_text("")  # nothing is sent under the new name
    assert stored(keys_app, "before") == {} and stored(keys_app, "after") == {}

    type_into(page.get_by_label("Your name"), "before")  # set back: the three are sent, and stored under it
    expect(part(page, "waiting")).to_be_hidden()
    expect(part(page, "status")).to_have_text("")
    assert sorted(stored(keys_app, "before")) == sorted(labelled)


def test_the_annotators_name_survives_a_visit_to_another_page(keys_app, page):
    # a job running on the page visited: its panel redraws itself on a timer (a fragment rerun)
    job = JobFolder.create(keys_app.workspace.runs_dir, "pairs-busy", {"kind": "pairs", "model": "m", "config": {}})
    job.set_progress("running", 1, 10)  # this process stands for the job's: alive
    open_annotate(page, keys_app, "traveller")
    go_to(page, "Data")
    expect(page.get_by_text("pairs-busy")).to_be_visible()
    page.wait_for_timeout(5_000)  # the panel redraws itself twice
    go_to(page, "Train")  # and on, to a page with no job running
    go_to(page, "Annotate")
    expect(page.get_by_label("Your name")).to_have_value("traveller")
    expect(part(page, "pair-id")).to_be_visible()
    expect(page.get_by_text("Type your name to start")).to_have_count(0)
    job.set_progress("done", 10, 10)
