"""A real OpenAI-compatible chat-completions server for tests, answering with a local `HFBackend`.

It speaks the same wire format as vLLM: `POST /v1/chat/completions` with `usage`, and with
`logprobs.content[0].top_logprobs` when `logprobs` is asked for (from the model, or from `top_logprobs` where a
stand-in judge decides them itself). Tests can make it misbehave through the handle
that `serve` yields: fail the next N requests with a status, or answer without log-probabilities. A request for
any model other than the one served gets a 400, as a real server refuses a wrong name.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from cai_core.backends.base import SamplingParams

# One lock for every server in the process: two servers may share one model, and a torch module
# is not safe to call from several threads at once.
_MODEL_LOCK = threading.Lock()


class ServerHandle:
    """What a test sees of a running server: its URL, how many requests it got, and failure switches."""

    def __init__(self, url: str, model: str, logprobs: bool):
        self.url = url
        self.model = model
        self.logprobs = logprobs  # False: answer as if logprobs were unsupported
        self.requests = 0  # every POST received, failed ones included
        self._fail_left = 0
        self._fail_status = 503
        self._lock = threading.Lock()

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail_left, self._fail_status = n, status

    def _count_and_maybe_fail(self) -> int | None:
        with self._lock:
            self.requests += 1
            if self._fail_left > 0:
                self._fail_left -= 1
                return self._fail_status
            return None


def _top_logprobs(backend, messages: list[dict], k: int) -> list[dict]:
    """The k most likely first tokens of the reply, from the full next-token distribution."""
    with _MODEL_LOCK, torch.inference_mode():
        # The backend's own encoding, so that the prompt is exactly what its score_options sees.
        ids = torch.tensor(backend._encode([messages]), device=backend.device)
        logits = backend.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values, indices = logprobs.topk(k)
    entries = []
    for lp, token_id in zip(values.tolist(), indices.tolist(), strict=True):
        text = backend.tokenizer.decode([token_id])
        entries.append({"token": text, "logprob": lp, "bytes": list(text.encode())})
    return entries


def _make_handler(backend, handle: ServerHandle, top_logprobs):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _stream(self, messages: list[dict], params: SamplingParams) -> None:
            """Server-sent events as vLLM sends them: a chunk per piece of text, then [DONE]; the connection
            closes at the end (no length is known in advance)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with _MODEL_LOCK:
                for piece in backend.stream(messages, params):
                    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def _error(self, status: int, message: str) -> None:
            self._reply(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def do_POST(self):  # the name http.server dispatches to
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            injected = handle._count_and_maybe_fail()
            if injected is not None:
                return self._error(injected, f"injected failure {injected}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            if body.get("model") != handle.model:
                return self._error(400, f"model {body.get('model')!r} is not served here (try {handle.model!r})")
            messages = body["messages"]
            params = SamplingParams(
                max_new_tokens=int(body.get("max_tokens") or 16),
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                seed=int(body.get("seed") or 0),
                min_new_tokens=int(body.get("min_tokens") or 0),
            )
            if body.get("stream"):
                return self._stream(messages, params)
            with _MODEL_LOCK:
                generation = backend.generate([messages], params)[0]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
            if body.get("logprobs") and handle.logprobs:
                top = top_logprobs(messages, int(body.get("top_logprobs") or 1))
                first = dict(top[0], top_logprobs=top)
                choice["logprobs"] = {"content": [first]}
            usage = {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            }
            self._reply(
                200,
                {
                    "id": f"chatcmpl-{handle.requests}",
                    "object": "chat.completion",
                    "model": handle.model,
                    "choices": [choice],
                    "usage": usage,
                },
            )

    return Handler


@contextlib.contextmanager
def serve(backend, *, model: str = "tiny", logprobs: bool = True, top_logprobs=None) -> Iterator[ServerHandle]:
    """Run a server on a free port of 127.0.0.1 for the `with` block; the handle's `url` ends in /v1.
    `top_logprobs(messages, k)`, where given, answers the first token's top k instead of the backend's model."""
    handle = ServerHandle("", model, logprobs)
    top_logprobs = top_logprobs or (lambda messages, k: _top_logprobs(backend, messages, k))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(backend, handle, top_logprobs))
    server.daemon_threads = True
    handle.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, name=f"openai-server-{handle.url}", daemon=True)
    thread.start()
    try:
        yield handle
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def dead_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: the port was free a moment ago and is closed again."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def vllm_servers(model_dir: str, name: str, count: int = 1, timeout: float = 600) -> Iterator[list[str]]:
    """`count` real vLLM OpenAI servers (`python -m vllm.entrypoints.openai.api_server`) for `model_dir` on
    free loopback ports, started together; yields their base URLs (ending in /v1). fp32 and no torch.compile,
    as the in-process engine in the tests: the same numbers, a shorter start-up."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    from cai_core.engine_service import cpu_server_options

    urls = [dead_url() for _ in range(count)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in urls]
        servers = [
            subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
                + ["--served-model-name", name, "--host", "127.0.0.1", "--port", url.split(":")[2].split("/")[0]]
                + ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096"]
                + cpu_server_options(model_dir),  # a fleet on a CPU as the README starts one
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a group of its own: `kill_vllm_server` takes its engine process too
            )
            for url, log in zip(urls, logs, strict=True)
        ]
        try:
            deadline = time.monotonic() + timeout
            for url, server, log in zip(urls, servers, logs, strict=True):
                while not _healthy(url):
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"vLLM server at {url} did not start:\n{log.read().decode()[-3000:]}")
                    time.sleep(1)
            _VLLM_PROCESSES.update(zip(urls, servers, strict=True))
            yield urls
        finally:
            for url in urls:
                _VLLM_PROCESSES.pop(url, None)
            for server in servers:
                server.terminate()
            for server in servers:
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()


_VLLM_PROCESSES: dict = {}  # base URL -> Popen of each server `vllm_servers` runs


def kill_vllm_server(url: str) -> None:
    """`kill -9` of the vLLM server at URL (one that `vllm_servers` started) and of its EngineCore process: a node
    of the fleet lost mid-job. Killed alone, the API server left its EngineCore behind, spinning, for good."""
    import os
    import signal

    process = _VLLM_PROCESSES[url]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2)
        return True
    except OSError:
        return False


def served_requests(url: str) -> int:
    """Requests a vLLM server has finished, from its Prometheus metrics."""
    import urllib.request

    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=5).read().decode()
    counts = [line.split()[-1] for line in text.splitlines() if line.startswith("vllm:request_success_total")]
    return int(sum(float(c) for c in counts))
