from __future__ import annotations

import os
from pathlib import Path

# Tests run offline, as the workbench does by default; set before huggingface_hub reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The auto engine stays on transformers: the tests that want vLLM ask for it by name (`vllm:`), and a big
# test job would otherwise start a vLLM engine of its own.
os.environ.setdefault("CAI_AUTO_ENGINE", "hf")
# Tests that ask for vLLM share one engine per session (`load_backend` keeps it): no torch.compile, a
# start-up a minute shorter with the same numbers, and a quarter of the job default's KV cache.
os.environ.setdefault("CAI_VLLM_EAGER", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest

from cai_core.workspace import Workspace

from .browser.seed import seeded_data
from .tiny_model import build_tiny_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def second_tiny_model_path(tmp_path_factory) -> str:
    """Another tiny model, with other random weights: a second contestant for evaluations."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model-2"), seed=1))


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "data")


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    """The seeded data folder (a finished SL-CAI run, a copy of the shipped constitutions; tests/browser/seed.py)
    as the app's: pages under AppTest and the `cai` command read it through the environment, as `cai app` does."""
    workspace = seeded_data(tmp_path)
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(tmp_path / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    return workspace


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """The real default model, converted once into the project's data folder (shared across runs)."""
    from cai_core.backends import ensure_default_model

    return str(ensure_default_model(Workspace.from_env().models_dir))


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (it lies beside the project root only on the developers' machines and CI)")
    return path
