"""`cai app --host 0.0.0.0` in a real browser: its front door asks for a login before any page, the token URL
leaves no history entry, an annotator's pages offer no operator action, and logging out ends the login.

It runs the real command (not `streamlit run`), with the operator's token in `$CAI_APP_TOKEN` and an
annotator's login made with `cai app --add-login`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from cai_core.auth import add_login
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

from .conftest import browser_page
from .harness import SERVER_START_S, free_port, wait_for_app
from .seed import DOG_PROMPT, seeded_data

pytestmark = pytest.mark.browser

TOKEN = "browser-test-token-3f9c1a"


@pytest.fixture(scope="module")
def exposed_app(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-login")
    workspace = seeded_data(root)
    password = add_login(workspace.root, "ada")
    port = free_port()
    env = {
        **os.environ,
        "CAI_DATA_DIR": str(workspace.root),
        "CAI_CONSTITUTIONS_DIR": str(root / "constitutions"),
        "CAI_APP_TOKEN": TOKEN,
    }
    env.pop("CAI_DB", None)
    command = [sys.executable, "-m", "cai_core.cli", "app", "--host", "0.0.0.0", "--port", str(port)]
    with open(root / "app.log", "wb") as log:
        app = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                assert app.poll() is None and time.monotonic() < deadline, (root / "app.log").read_text()
                time.sleep(0.2)
        yield url, password, root / "constitutions", workspace
    finally:
        app.send_signal(signal.SIGTERM)  # `cai app` stops its server with it
        app.wait(timeout=20)


def log_in(page, name: str, secret: str) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password or token").fill(secret)
    page.get_by_role("button", name="Log in").click()


def test_every_page_asks_for_a_login_and_shows_nothing_else(chromium, exposed_app):
    url, *_ = exposed_app
    with browser_page(chromium) as page:
        for path in ("", "Traces", "Annotate"):
            page.goto(f"{url}/{path}")
            expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
            expect(page.get_by_test_id("stApp")).to_have_count(0)
            expect(page.get_by_text(DOG_PROMPT)).to_have_count(0)

        log_in(page, "", "wrong")
        expect(page.get_by_role("alert")).to_have_text("Wrong name, password or token.")
        expect(page.get_by_test_id("stApp")).to_have_count(0)

        log_in(page, "", TOKEN)  # back to the page asked for: Annotate
        wait_for_app(page)
        expect(page.get_by_role("heading", name="Annotate")).to_be_visible()
        expect(page.get_by_test_id("stSidebar").get_by_text("Logged in as operator (operator)")).to_be_visible()


def test_the_token_url_leaves_no_history_entry_to_log_in_again_with(chromium, exposed_app):
    url, *_ = exposed_app
    with browser_page(chromium) as page:
        page.goto(f"{url}/_cai/login")
        entries = page.evaluate("history.length")
        page.goto(f"{url}/?token={TOKEN}")
        wait_for_app(page)
        expect(page.get_by_test_id("stMetric").filter(has_text="Traces")).to_contain_text("2")
        assert "token" not in page.url
        assert page.evaluate("history.length") == entries + 1  # the app's page only: no token URL
        page.go_back()
        assert "token" not in page.url and page.url.startswith(f"{url}/_cai/login")


def test_an_annotator_is_offered_no_operator_action_and_logging_out_ends_the_login(chromium, exposed_app):
    url, password, constitutions, _ = exposed_app
    before = {path.name: path.read_bytes() for path in constitutions.iterdir()}
    with browser_page(chromium) as page:
        page.goto(f"{url}/Constitution")
        log_in(page, "ada", password)
        wait_for_app(page)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("Logged in as ada (annotator)")).to_be_visible()
        expect(sidebar.get_by_text("Operators only", exact=False)).to_be_visible()
        expect(sidebar.get_by_role("textbox", name="Data folder")).to_be_disabled()
        expect(page.get_by_role("button", name="Save", exact=True)).to_be_disabled()
        page.goto(f"{url}/Data")
        wait_for_app(page)
        expect(page.get_by_text("Operators only", exact=False).first).to_be_visible()
        expect(page.get_by_role("button", name="Import")).to_have_count(0)
        page.goto(f"{url}/Annotate")  # what an annotator is here for
        wait_for_app(page)
        expect(page.get_by_role("heading", name="Annotate")).to_be_visible()

        page.get_by_test_id("stSidebar").get_by_role("link", name="Log out").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
        page.goto(f"{url}/Annotate")
        expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
    assert {path.name: path.read_bytes() for path in constitutions.iterdir()} == before


def test_an_upload_passes_the_door_and_the_import_names_the_login_not_a_typed_name(chromium, exposed_app, tmp_path):
    url, *_ = exposed_app
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("pair_id,prompt,response_a,response_b\ndoor-pair,Q?,yes,no\n")
    labels = tmp_path / "labels.csv"  # no annotator column: every line is whoever imports it
    labels.write_text("pair_id,label\ndoor-pair,a\n")
    with browser_page(chromium) as page:
        page.goto(f"{url}/Data?token={TOKEN}")
        wait_for_app(page)
        page.get_by_role("tab", name="Import a file").click()
        expect(page.get_by_role("textbox", name="Labels: annotator of lines with none")).to_be_disabled()
        steps = (
            ("pairs: prompt, response_a, response_b", pairs, "Read 1 pair from pairs.csv, 1 new"),
            ("people's labels: pair_id, label, annotator", labels, "imported 1 human label"),
        )
        for kind, upload, done in steps:
            page.get_by_text(kind, exact=True).click()
            dropzone = page.locator(".st-key-import_file_upload").get_by_test_id("stFileUploaderDropzoneInput")
            dropzone.set_input_files(upload)  # a PUT to /_stcore/upload_file through the door, with its cookie
            expect(page.get_by_text(upload.name)).to_be_visible()
            page.get_by_role("button", name="Import").click()
            expect(page.get_by_text(done, exact=False)).to_be_visible()
            page.locator(".st-key-import_file_upload").get_by_role("button", name="Remove").click()
        expect(page.get_by_test_id("stException")).to_have_count(0)
    with Store.open(exposed_app[3]) as store:
        (label,) = store.human_labels(pair_id="door-pair")
    assert (label.annotator, label.imported_by, label.choice) == ("operator", "operator", "a")
