"""The engine service with a real vLLM server on the default model: started once and reused, on 127.0.0.1 only,
refusing a request without its key, and a `kill -9` of it mid-job: the job starts it again and finishes with every
record once. Skipped where vLLM is not installed (`make setup` installs it on Linux x86-64)."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from cai_core import engine_service, jobs
from cai_core.backends import load_backend
from cai_core.backends.default_model import FOLDER_NAME
from cai_core.critique import GenerateConfig

from .conftest import REAL_VLLM
from .test_engine_service import DEMO, HHH, listening_addresses

pytestmark = REAL_VLLM


def test_a_real_service_is_reused_keyed_on_loopback_and_survives_a_kill_mid_job(default_model_path, workspace):
    from cai_core import backends

    backends._load_service.cache_clear()
    service = engine_service.start(workspace, default_model_path)
    try:
        assert engine_service.start(workspace, default_model_path).pid == service.pid
        assert listening_addresses(service.port) == {"127.0.0.1"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(service.url + "/models", timeout=30)
        assert refused.value.code == 401
        assert load_backend(f"service:{default_model_path}", workspace).name == FOLDER_NAME  # as records name it

        killed = threading.Event()

        def kill_once_answers_are_stored() -> None:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if any(p.stat().st_size for p in workspace.runs_dir.glob("*/trace_steps.jsonl")):
                    os.kill(service.pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=kill_once_answers_are_stored, daemon=True)
        watcher.start()
        config = GenerateConfig(
            constitution=HHH,
            prompts=DEMO,
            model=f"service:{default_model_path}",
            rounds=2,
            limit=4,
            chunk_size=2,
            max_new_tokens=16,
            temperature=0,
        )
        job = jobs.run("generate", config, workspace)
        assert killed.is_set() and job.progress().status == "done"
        restarted = engine_service.find(workspace, default_model_path)
        assert restarted and restarted.pid != service.pid
        steps = collections.Counter((s["trace_id"], s["round"]) for s in job.read("trace_steps"))
        assert len(steps) == 4 * 3 and set(steps.values()) == {1}
    finally:
        engine_service.stop(workspace)
        backends._load_service.cache_clear()
    assert engine_service.running(workspace) == []
