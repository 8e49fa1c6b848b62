"""API keys go only to the endpoints the operator listed, whoever names the URL; the browser names only listed
ones. A real HTTP server records the Authorization header each request carried."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cai_core.backends import SamplingParams, load_backend
from cai_core.browser_models import browser_model_spec
from cai_core.endpoints import EndpointError, endpoint_choices, load_endpoints
from cai_core.workspace import Workspace


@pytest.fixture
def server():
    """A chat-completions server that answers "ok" and keeps each request's Authorization header."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # the name http.server dispatches to
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"choices": [{"message": {"content": "ok"}}], "usage": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    httpd.shutdown()


def ask(spec: str, workspace: Workspace) -> str:
    return load_backend(spec, workspace).generate([[{"role": "user", "content": "hi"}]], SamplingParams(4))[0].text


def test_openai_api_key_is_not_sent_to_an_unlisted_url(server, tmp_path, monkeypatch):
    url, seen = server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.delenv("CAI_ENDPOINTS", raising=False)
    assert ask(f"openai:m@{url}", Workspace(tmp_path / "data")) == "ok"  # the CLI may name it, keyless
    assert seen == [None]


def test_a_listed_endpoint_gets_its_own_key_and_is_offered_to_the_browser(server, tmp_path, monkeypatch):
    url, seen = server
    ws = Workspace(tmp_path / "data")
    ws.root.mkdir()
    (ws.root / "endpoints.yaml").write_text(
        f"endpoints:\n  - name: lab\n    urls: [{url}/]\n    models: [m]\n    key_env: LAB_KEY\n"
    )
    monkeypatch.setenv("LAB_KEY", "lab-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.delenv("CAI_ENDPOINTS", raising=False)
    assert ask(f"openai:other-model@{url}", ws) == "ok"
    assert seen == ["Bearer lab-secret"]
    listed = load_endpoints(ws.root)
    assert endpoint_choices(listed) == {f"openai:m@{url}": "m · lab"}
    assert browser_model_spec(f"openai:m@{url}", ws, listed) == f"openai:m@{url}"


def test_the_browser_may_not_name_an_unlisted_url_nor_a_folder_outside_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("CAI_ENDPOINTS", raising=False)
    ws = Workspace(tmp_path / "data")
    with pytest.raises(EndpointError, match="http://attacker.example/v1 is not a listed endpoint"):
        browser_model_spec("openai:m@http://attacker.example/v1", ws, [])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(EndpointError, match="outside the workspace"):
        browser_model_spec(str(outside), ws, [])
    inside = ws.root / "runs" / "x" / "final"
    inside.mkdir(parents=True)
    assert browser_model_spec(str(inside), ws, []) == str(inside.resolve())
    assert browser_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct", ws, []) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_broken_endpoints_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("CAI_ENDPOINTS", raising=False)
    ws = Workspace(tmp_path / "data")
    ws.root.mkdir()
    (ws.root / "endpoints.yaml").write_text(
        "endpoints:\n  - name: lab\n    urls: [http://x/v1]\n    key_env: NOPE_KEY\n"
    )
    with pytest.raises(EndpointError, match=r"endpoints.yaml, endpoint 1 \(lab\): \$NOPE_KEY is not set"):
        load_endpoints(ws.root)
