"""What the browser names must keep the server inside its workspace: no write through a planted symlink, no key
sent to a host a listed endpoint redirects to, no `datasets` builder reading the server's own folders."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from cai_core.backends import BackendError, SamplingParams, load_backend
from cai_core.exports import export_path, load_export, write_export
from cai_core.workspace import OutsideWorkspace, Workspace

from .app_pages import open_page
from .test_pages import texts

EVALUATE = "pages/7_Evaluate.py"

# --- redirects ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def http_server(answer):
    """A real HTTP server on a free port; `answer(handler)` replies to every GET and POST, and every request's
    method, path and Authorization header is kept in `.seen`."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            answer(self)

        do_GET = do_POST = handle_one

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen = seen
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def reply_json(handler, body: dict) -> None:
    data = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_listed_endpoint_that_redirects_sends_its_key_nowhere_else(workspace, monkeypatch, status):
    completion = {"choices": [{"message": {"content": "hi"}}], "usage": {}}
    with http_server(lambda h: reply_json(h, completion)) as elsewhere:

        def redirect(handler):
            handler.send_response(status)
            handler.send_header("Location", f"{elsewhere.url}/v1/chat/completions")
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with http_server(redirect) as listed:
            endpoints = workspace.root / "endpoints.yaml"
            endpoints.parent.mkdir(parents=True)
            endpoints.write_text(f"endpoints:\n  - name: lab\n    urls: [{listed.url}/v1]\n    key: sk-lab-secret\n")
            monkeypatch.setenv("CAI_ENDPOINTS", str(endpoints))
            backend = load_backend(f"openai:m@{listed.url}/v1", workspace)
            with pytest.raises(BackendError, match=rf"answered HTTP {status}, a redirect to {elsewhere.url}/v1/chat"):
                backend.generate([[{"role": "user", "content": "hello"}]], SamplingParams(max_new_tokens=4))
            assert listed.seen == [("POST", "/v1/chat/completions", "Bearer sk-lab-secret")]
    assert elsewhere.seen == []


def test_a_server_that_answers_is_still_used(workspace):
    completion = {"choices": [{"message": {"content": "hi"}}], "usage": {}}
    with http_server(lambda h: reply_json(h, completion)) as server:
        [answer] = load_backend(f"openai:m@{server.url}/v1", Workspace(workspace.root)).generate(
            [[{"role": "user", "content": "hello"}]], SamplingParams(max_new_tokens=4)
        )
    assert answer.text == "hi"


# --- symlinks planted where the browser writes ---------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A file and a folder outside the workspace, which a planted link points at."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_text("the server's own file\n")
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_an_export_replaces_a_link_planted_at_its_path_and_writes_nothing_outside(workspace, outside, fmt):
    rows = pd.DataFrame({"prompt": ["p"], "completion": ["c"]})
    target = export_path(workspace, "sft", fmt)
    target.parent.mkdir(parents=True)
    target.symlink_to(outside / "victim.txt" if fmt != "hf" else outside)
    write_export(rows, workspace.browser_write_path(target), fmt)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "the server's own file\n"
    assert not target.is_symlink() and len(load_export(target)) == 1


def test_a_folder_linked_out_of_the_workspace_is_refused_before_anything_is_written(workspace, outside):
    workspace.root.mkdir(parents=True)
    (workspace.root / "exports").symlink_to(outside)
    with pytest.raises(OutsideWorkspace, match=r"exports: a symbolic link \(to .*outside\); the app writes only"):
        workspace.browser_write_path(export_path(workspace, "sft", "jsonl"))
    assert [p.name for p in outside.iterdir()] == ["victim.txt"]


def test_an_export_over_a_folder_replaces_it_whole(workspace):
    target = export_path(workspace, "sft", "hf")
    write_export(pd.DataFrame({"prompt": ["a", "b"]}), target, "hf")
    write_export(pd.DataFrame({"prompt": ["c"]}), target, "hf")
    assert list(load_export(target)["prompt"]) == ["c"]
    assert [p.name for p in target.parent.iterdir()] == ["sft"]


# --- hf: sources ------------------------------------------------------------------------------------------------------


def packaged_builders() -> list[str]:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return sorted(_PACKAGED_DATASETS_MODULES)


@pytest.mark.parametrize("name", packaged_builders())
def test_every_packaged_builder_is_refused_from_the_browser(workspace, name):
    with pytest.raises(OutsideWorkspace, match=rf"hf:{name}: .*OWNER/NAME.*\(a `datasets` builder that reads"):
        workspace.resolve_browser_source(f"hf:{name}")


@pytest.mark.parametrize("typed", ["hf:imdb", "hf:imdb:test", "hf:owner/", "hf:/name", "hf:a/b/c", "hf:../x"])
def test_only_an_owner_slash_name_is_a_hub_dataset(workspace, typed):
    with pytest.raises(OutsideWorkspace, match="OWNER/NAME"):
        workspace.resolve_browser_source(typed)


def test_a_hub_dataset_id_passes(workspace):
    assert workspace.resolve_browser_source("hf:allenai/xstest:train") == "hf:allenai/xstest:train"


def test_the_evaluate_pages_add_a_set_refuses_hf_text_and_reads_nothing(ws, monkeypatch):
    import datasets

    loads = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: loads.append(args))
    at = open_page(EVALUATE)
    at.text_input(key="set_source").set_value("hf:text").run()
    assert not at.exception, at.exception
    assert "hf:text: from the browser, hf: names a hub dataset as OWNER/NAME" in texts(at.error)
    assert loads == []
    assert not [s for s in at.selectbox if s.key == "set_prompt"]


def test_a_dangling_link_in_place_of_uploads_is_refused_and_nothing_is_created(workspace, tmp_path):
    workspace.root.mkdir(parents=True)
    (workspace.root / "uploads").symlink_to(tmp_path / "not-yet")
    with pytest.raises(OutsideWorkspace, match=r"uploads: a symbolic link \(to .*not-yet\)"):
        workspace.browser_write_path(workspace.root / "uploads" / "mine.jsonl")
    assert not (tmp_path / "not-yet").exists()


def test_an_atomic_write_keeps_the_replaced_files_mode_and_makes_new_files_readable(tmp_path):
    from cai_core.workspace import write_file_atomically

    new = write_file_atomically(tmp_path / "new.txt", lambda out: out.write(b"x"))
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    secret.chmod(0o600)
    write_file_atomically(secret, lambda out: out.write(b"{}"))
    assert (new.stat().st_mode & 0o777, secret.stat().st_mode & 0o777) == (0o644, 0o600)
