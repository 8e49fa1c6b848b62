"""A stand-in for vLLM's OpenAI server, for the engine service's tests where starting vLLM would take minutes: the
same command-line options that matter (--served-model-name, --host, --port), the key from VLLM_API_KEY guarding
/v1 as vLLM's does, /health open, and chat completions that answer "echo: <the last user turn>".

Switches through the environment: FAKE_ENGINE_START_DELAY (seconds before it listens), FAKE_ENGINE_EXIT (exit
at start with a message), FAKE_ENGINE_DIE_AFTER=N with FAKE_ENGINE_DIED=PATH (after N answers it kills itself with
SIGKILL, once: PATH marks that it did, so the server started after it lives), FAKE_ENGINE_HOLD=TEXT with
FAKE_ENGINE_RELEASE=PATH (a chat whose last user turn holds TEXT is answered only once PATH exists: the slowest
answer of a batch, held as long as a test needs), FAKE_ENGINE_SECONDS_PER_WORD=S (each answer takes S seconds a word
of its text, as an engine's decode grows with the answer: a batch's answers end at different times)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    if os.environ.get("FAKE_ENGINE_EXIT"):
        print(f"RuntimeError: {os.environ['FAKE_ENGINE_EXIT']}", flush=True)
        sys.exit(1)
    time.sleep(float(os.environ.get("FAKE_ENGINE_START_DELAY", "0")))
    key = os.environ["VLLM_API_KEY"]
    die_after = int(os.environ.get("FAKE_ENGINE_DIE_AFTER", "0"))
    died = os.environ.get("FAKE_ENGINE_DIED", "")
    hold, release = os.environ.get("FAKE_ENGINE_HOLD", ""), os.environ.get("FAKE_ENGINE_RELEASE", "")
    seconds_per_word = float(os.environ.get("FAKE_ENGINE_SECONDS_PER_WORD", "0"))
    answered = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _reply(self, status: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {key}":
                return True
            self._reply(401, {"error": "Unauthorized"})
            return False

        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, {})
            if self.path == "/v1/models" and self._authorized():
                return self._reply(200, {"data": [{"id": args.served_model_name}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not self._authorized():
                return
            if body.get("model") != args.served_model_name:
                return self._reply(404, {"error": {"message": f"model {body.get('model')!r} does not exist"}})
            with lock:
                answered.append(1)
                if die_after and len(answered) > die_after and died and not os.path.exists(died):
                    open(died, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)
            text = "echo: " + body["messages"][-1]["content"]
            time.sleep(seconds_per_word * len(text.split()))
            while hold and hold in text and not os.path.exists(release):
                time.sleep(0.05)
            usage = {"prompt_tokens": 3, "completion_tokens": len(text.split())}
            self._reply(200, {"choices": [{"index": 0, "message": {"content": text}}], "usage": usage})

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
