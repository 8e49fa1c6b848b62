"""A loopback stand-in for the Hugging Face Hub's HTTP API: the endpoints huggingface_hub calls to create a
repository and commit small files to it, recording every request, so that a push is tested without the real Hub."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class StandInHub:
    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []  # method, path, headers
        self.repos: dict[str, dict] = {}  # "type/id" -> {"visibility": "private" | "public"}
        self.files: dict[str, dict[str, bytes]] = {}  # "type/id" -> path -> content
        self.card_metadata: list[dict] = []  # each README's YAML block, as validated
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path, dict(self.headers)))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    request = json.loads(body)
                    key = f"{request.get('type') or 'model'}/{request.get('organization')}/{request['name']}"
                    hub.repos[key] = {"visibility": request.get("visibility")}
                    return self.reply(200, {"url": hub.repo_url(key), "name": key})
                if parts == ["api", "validate-yaml"]:  # the card's metadata block, as the Hub checks it
                    content = json.loads(body)["content"]
                    try:
                        metadata = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                    except yaml.YAMLError as error:
                        return self.reply(400, {"errors": [{"message": str(error)}]})
                    hub.card_metadata.append(metadata)
                    return self.reply(200, {"errors": [], "warnings": []})
                if parts[0] == "api" and len(parts) >= 5 and parts[-2] == "preupload":
                    files = json.loads(body)["files"]
                    return self.reply(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                if parts[0] == "api" and len(parts) >= 5 and parts[-2] == "commit":
                    key = f"{parts[1].rstrip('s')}/{parts[2]}/{parts[3]}"
                    stored = hub.files.setdefault(key, {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            stored[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    commit = f"{hub.repo_url(key)}/commit/{'1' * 40}"
                    return self.reply(200, {"commitUrl": commit, "commitOid": "1" * 40})
                self.reply(404, {"error": f"the stand-in Hub has no {self.path}"})

            def do_GET(self):
                hub.requests.append(("GET", self.path, dict(self.headers)))
                self.reply(404, {"error": f"the stand-in Hub has no {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def repo_url(self, key: str) -> str:
        """The Hub's URL of a repository: datasets under /datasets, models at the top."""
        kind, name = key.split("/", 1)
        return f"{self.url}/{name}" if kind == "model" else f"{self.url}/{kind}s/{name}"

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
