"""The OpenAI-compatible servers the operator lists, with their keys (`browser_models` checks what the browser names).

An API key is sent only to a URL the operator listed in the endpoints file (`DATA_DIR/endpoints.yaml`, or the
file `$CAI_ENDPOINTS` names), whoever names the URL: the browser, the CLI or Python. `OPENAI_API_KEY` also
goes to its issuer, https://api.openai.com/v1, unlisted. The CLI may name any other URL, keyless; the
browser may name only listed ones (it must not make the server reach out to arbitrary addresses either).

    # data/endpoints.yaml
    endpoints:
      - name: lab-vllm
        urls: [http://10.0.0.5:8000/v1, http://10.0.0.6:8000/v1]
        models: [smollm2]          # offered in the app's sidebar
        key_env: LAB_VLLM_KEY      # the key, from the server's environment (or `key: ...` here)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

ENDPOINTS_ENV = "CAI_ENDPOINTS"
OPENAI_URL = "https://api.openai.com/v1"


class EndpointError(ValueError):
    """A malformed endpoints file, or a model spec the browser may not name."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    urls: tuple[str, ...]
    models: tuple[str, ...] = ()
    key: str | None = None

    def spec(self, model: str) -> str:
        return f"openai:{model}@{','.join(self.urls)}"


def normalise_url(url: str) -> str:
    return url.strip().rstrip("/")


def endpoints_file(data_dir: Path) -> Path:
    """`$CAI_ENDPOINTS`, else the data folder's `endpoints.yaml`. `cai app` sets the variable to its own data
    folder's file, so that a data folder switched to in the browser (or a job it starts) lists nothing new."""
    return Path(os.environ.get(ENDPOINTS_ENV) or data_dir / "endpoints.yaml")


def load_endpoints(data_dir: Path) -> list[Endpoint]:
    path = endpoints_file(data_dir)
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EndpointError(f"{path}: {exc}") from None
    entries = data.get("endpoints") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise EndpointError(f"{path}: expected `endpoints:` with a list of {{name, urls, models, key_env}}")
    found = []
    for n, entry in enumerate(entries, start=1):
        where = f"{path}, endpoint {n}"
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("urls"):
            raise EndpointError(f"{where}: needs a name and urls")
        urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
        key = entry.get("key")
        if entry.get("key_env"):
            key = os.environ.get(str(entry["key_env"]))
            if not key:
                raise EndpointError(f"{where} ({entry['name']}): ${entry['key_env']} is not set")
        models = entry.get("models") or []
        found.append(
            Endpoint(str(entry["name"]), tuple(normalise_url(str(u)) for u in urls), tuple(map(str, models)), key)
        )
    return found


def api_keys(urls: list[str], data_dir: Path) -> dict[str, str]:
    """The key for each URL that has one: a listed endpoint's, or `OPENAI_API_KEY` for OpenAI itself."""
    keys = {url: endpoint.key for endpoint in load_endpoints(data_dir) for url in endpoint.urls if endpoint.key}
    if os.environ.get("OPENAI_API_KEY"):
        keys.setdefault(OPENAI_URL, os.environ["OPENAI_API_KEY"])
    return {url: keys[url] for url in map(normalise_url, urls) if url in keys}


def endpoint_choices(endpoints: list[Endpoint]) -> dict[str, str]:
    """Spec → label of every model the endpoints offer, for the app's model list."""
    return {endpoint.spec(model): f"{model} · {endpoint.name}" for endpoint in endpoints for model in endpoint.models}
