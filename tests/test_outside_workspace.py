"""What the browser names must keep the server inside its workspace: no write through a planted symlink, no key
sent to a host a listed endpoint redirects to, no `datasets` builder reading the server's own folders."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cai_core.backends import BackendError, SamplingParams, load_backend
from cai_core.workspace import Workspace

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
