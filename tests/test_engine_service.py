"""The engine service's lifecycle (`cai_core.engine_service`) and the `service:` engine, against a stand-in server
(tests/fake_engine_server.py: vLLM's options, its key check and chat completions, started in a second) so that they
run everywhere in seconds. tests/test_engine_service_vllm.py runs the same checks against a real vLLM server."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cai_core import engine_service, jobs
from cai_core.backends import BackendError, SamplingParams, load_backend
from cai_core.cli import main
from cai_core.critique import GenerateConfig
from cai_core.workspace import PROJECT_ROOT

from .app_pages import open_page

FAKE_SERVER = str(Path(__file__).with_name("fake_engine_server.py"))
HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
DEMO = str(PROJECT_ROOT / "data" / "demo_prompts.jsonl")


@pytest.fixture
def fake_engine(monkeypatch, workspace):
    """Services start the stand-in server; every one this test started is stopped after it."""

    def command(model, name, dtype, port):
        return [sys.executable, FAKE_SERVER, "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]

    monkeypatch.setattr(engine_service, "server_command", command)
    monkeypatch.setenv(engine_service.START_TIMEOUT_ENV, "60")
    from cai_core import backends

    backends._load_service.cache_clear()  # a backend per test: each has its own data folder
    yield
    engine_service.stop(workspace)
    backends._load_service.cache_clear()


def listening_addresses(port: int) -> set[str]:
    """The local addresses that listen on `port` (TCP over IPv4 and IPv6), from the kernel's socket tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add("127.0.0.1" if address == "0100007F" else address)
    return found


def test_start_status_reuse_stop(fake_engine, workspace, tiny_model_path, capsys):
    service = engine_service.start(workspace, tiny_model_path)
    assert service.alive() and service.owner == "job"
    again = engine_service.start(workspace, tiny_model_path)
    assert again.pid == service.pid  # found running and reused, not a second server
    (row,) = engine_service.describe(workspace)
    assert row["state"] == "ready" and row["url"] == f"http://127.0.0.1:{service.port}/v1"
    assert row["memory_mib"] > 0 and row["model"] == tiny_model_path
    assert main(["--data-dir", str(workspace.root), "engine", "status"]) == 0
    shown = capsys.readouterr().out
    assert service.url in shown and engine_service.api_key(workspace) not in shown
    assert [s.pid for s in engine_service.stop(workspace, tiny_model_path)] == [service.pid]
    assert not service.alive() and engine_service.running(workspace) == []
    assert not list(engine_service.engines_dir(workspace).glob("*.json"))  # no state left to mislead a start


def test_the_key_is_the_owners_alone_and_a_request_without_it_is_refused(fake_engine, workspace, tiny_model_path):
    service = engine_service.start(workspace, tiny_model_path)
    key_file = engine_service.engines_dir(workspace) / "api_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(service.url + "/models", timeout=10)
    assert refused.value.code == 401
    key = engine_service.api_key(workspace)
    assert key not in Path(f"/proc/{service.pid}/cmdline").read_text()  # `ps` shows a command line to anyone
    assert key not in Path(service.log).read_text() and key not in service.url
    assert listening_addresses(service.port) == {"127.0.0.1"}


def test_a_dead_service_is_replaced_and_a_reused_pid_is_not_taken_for_it(fake_engine, workspace, tiny_model_path):
    first = engine_service.start(workspace, tiny_model_path)
    os.killpg(first.pid, 9)
    gone_by = time.monotonic() + 30
    while first.alive() and time.monotonic() < gone_by:  # a signal is delivered, not done, when kill returns
        time.sleep(0.05)
    assert engine_service.find(workspace, tiny_model_path) is None
    second = engine_service.start(workspace, tiny_model_path)
    assert second.pid != first.pid and second.alive()
    # a state file whose pid now belongs to another program (this test's own process): not ours, never killed
    state = Path(second.log).with_suffix(".json")
    record = json.loads(state.read_text())
    engine_service.stop(workspace)
    state.write_text(json.dumps({**record, "pid": os.getpid(), "process_start": 1}))
    assert engine_service.running(workspace) == []
    third = engine_service.start(workspace, tiny_model_path)
    assert third.pid not in (os.getpid(), second.pid) and third.alive()


def test_two_starts_at_once_start_one_server(fake_engine, workspace, tiny_model_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_START_DELAY", "1")  # both starts land while the first server is not up
    started: list[int] = []
    threads = [
        threading.Thread(target=lambda: started.append(engine_service.start(workspace, tiny_model_path).pid))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(started) == 2 and started[0] == started[1]
    assert len(engine_service.running(workspace)) == 1


def test_a_key_read_while_another_start_writes_it_is_the_written_key(workspace, monkeypatch):
    """The race behind two servers from two starts at once: one start made the key file and had not yet written
    the key when the other read it, got an empty key, found the first server deaf to it (401), took it for hung,
    and replaced it. Here the first start is held between making its key and storing it, deterministically."""
    made_first = threading.Event()
    go_on = threading.Event()
    make_key = engine_service.secrets.token_urlsafe

    def held_once(nbytes: int) -> str:
        if not made_first.is_set():
            made_first.set()
            go_on.wait(timeout=60)
        return make_key(nbytes)

    monkeypatch.setattr(engine_service.secrets, "token_urlsafe", held_once)
    keys: list[str] = []
    first = threading.Thread(target=lambda: keys.append(engine_service.api_key(workspace)))
    first.start()
    assert made_first.wait(timeout=60)
    second = engine_service.api_key(workspace)  # read while the first is held
    go_on.set()
    first.join(timeout=60)
    assert second and keys == [second]
    assert engine_service.api_key(workspace) == second
    assert (engine_service.engines_dir(workspace) / "api_key").stat().st_mode & 0o777 == 0o600


def test_an_empty_key_file_is_refused_naming_it(workspace):
    """An empty key (a start killed mid-write, before keys were linked into place whole) guards nothing."""
    key_file = engine_service.engines_dir(workspace) / "api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("")
    with pytest.raises(BackendError, match=f"{key_file} is empty: delete it"):
        engine_service.api_key(workspace)


def test_a_server_that_dies_at_start_is_reported_with_its_log(fake_engine, workspace, tiny_model_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_EXIT", "no room for the KV cache")
    with pytest.raises(BackendError, match="exited while starting; its log is .*no room for the KV cache") as exc:
        engine_service.start(workspace, tiny_model_path)
    assert str(engine_service.engines_dir(workspace)) in str(exc.value)
    assert engine_service.running(workspace) == []


def test_auto_runs_on_the_service_where_vllm_is_found(fake_engine, workspace, tiny_model_path, monkeypatch):
    from cai_core import backends

    monkeypatch.delenv("CAI_AUTO_ENGINE")
    monkeypatch.setattr(backends, "_vllm_found", lambda: True)
    backend = load_backend(tiny_model_path, workspace)
    assert backend.engine == "service" and backend.name == tiny_model_path
    answer = backend.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4))
    assert answer[0].text == "echo: hi"
    monkeypatch.setenv("CAI_AUTO_ENGINE", "hf")
    assert load_backend(tiny_model_path, workspace).engine == "hf"


def test_a_job_whose_service_is_killed_restarts_it_and_loses_and_doubles_nothing(
    fake_engine, workspace, tiny_model_path, monkeypatch, tmp_path, capfd
):
    monkeypatch.setenv("FAKE_ENGINE_DIE_AFTER", "5")  # SIGKILL itself in the middle of the first batch of answers
    monkeypatch.setenv("FAKE_ENGINE_DIED", str(tmp_path / "died"))
    config = GenerateConfig(
        constitution=HHH, prompts=DEMO, model=f"service:{tiny_model_path}", rounds=2, limit=6, samples=2, chunk_size=4
    )
    job = jobs.run("generate", config, workspace)
    assert (tmp_path / "died").exists(), "the service was not killed: the test tests nothing"
    assert job.progress().status == "done" and job.progress().done == job.progress().total
    assert "starting it again" in capfd.readouterr().err
    steps = collections.Counter((s["trace_id"], s["round"]) for s in job.read("trace_steps"))
    assert len(steps) == 6 * 2 * 3 and set(steps.values()) == {1}  # every step once
    assert len({t["trace_id"] for t in job.read("traces")}) == 6 * 2
    assert job.engines() == "service"


def test_a_chunks_answers_are_stored_as_they_come_not_when_its_slowest_returns(
    fake_engine, workspace, tiny_model_path, monkeypatch, tmp_path
):
    """Issue 26: a job on the warm service stored its first step only when its chunk's slowest answer was in, so a
    page's Start showed nothing for as long as the longest answer took. The stand-in holds one answer of the chunk
    until the test lets it go; the others must be on disk meanwhile."""
    release = tmp_path / "release"
    monkeypatch.setenv("FAKE_ENGINE_HOLD", "neighbor's front door")  # demo-01's prompt: its answer is held
    monkeypatch.setenv("FAKE_ENGINE_RELEASE", str(release))
    config = GenerateConfig(constitution=HHH, prompts=DEMO, model=f"service:{tiny_model_path}", rounds=1, limit=4)
    job = jobs.prepare("generate", config, workspace)
    ended: list = []
    runner = threading.Thread(target=lambda: ended.append(jobs.run("generate", config, workspace)), daemon=True)
    runner.start()
    try:
        stored: list[dict] = []
        deadline = time.monotonic() + 60
        while len(stored) < 3 and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.1)
            stored = list(job.records("trace_steps")) if (job.path / "trace_steps.jsonl").exists() else []
        assert len(stored) == 3, "no answer was stored while the chunk's slowest was held"
        assert not any(step["trace_id"].endswith(":demo-01:0") for step in stored)
        assert runner.is_alive()  # the held answer is still to come: the job is not done
    finally:
        release.touch()
        runner.join(timeout=120)
    assert ended and ended[0].progress().status == "done"
    steps = collections.Counter((s["trace_id"], s["round"]) for s in job.read("trace_steps"))
    assert len(steps) == 4 * 2 and set(steps.values()) == {1}


def test_a_job_keeps_several_chunks_in_flight_on_the_service(fake_engine, workspace, tiny_model_path):
    """The service batches whatever is in flight: one chunk at a time left it idle at each chunk's stage ends."""
    backend = load_backend(f"service:{tiny_model_path}", workspace)
    assert jobs.in_flight_for(backend, 64) > 1


def test_the_cli_starts_shows_and_stops_a_service_that_outlives_it(fake_engine, workspace, tiny_model_path, capsys):
    argv = ["--data-dir", str(workspace.root), "engine"]
    assert main([*argv, "start", tiny_model_path]) == 0
    (service,) = engine_service.running(workspace)
    assert service.owner == "cli" and service.url in capsys.readouterr().out
    # its own process group: a Ctrl-C in the terminal that started it does not reach it
    assert os.getpgid(service.pid) == service.pid != os.getpgid(0)
    assert main([*argv, "stop"]) == 0
    assert f"pid {service.pid}" in capsys.readouterr().out and not service.alive()


def test_a_job_process_stops_the_service_it_started_when_it_exits(workspace, tiny_model_path):
    script = f"""
import sys
from cai_core import engine_service
from cai_core.workspace import Workspace
engine_service.server_command = lambda model, name, dtype, port: [sys.executable, {FAKE_SERVER!r},
    "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
print(engine_service.start(Workspace.from_env(sys.argv[1]), sys.argv[2]).pid)
"""
    run = subprocess.run(
        [sys.executable, "-c", script, str(workspace.root), tiny_model_path],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) > 0 and engine_service.running(workspace) == []


def test_home_and_sidebar_show_what_runs_and_stop_it(fake_engine, ws, tiny_model_path):
    service = engine_service.start(ws, tiny_model_path)
    try:
        at = open_page()
        shown = [t.value for t in at.text if service.url in t.value]
        assert len(shown) == 2 and all("MiB · since" in t and "ready" in t for t in shown)  # sidebar and Home
        assert all(engine_service.api_key(ws) not in str(e.value) for e in [*at.text, *at.caption, *at.markdown])
        at.button(key=f"stop-engine-home-{service.pid}").click().run()
        assert not service.alive()
        assert not [t for t in at.text if service.url in t.value]
        assert any("No engine service runs" in c.value for c in at.caption)
    finally:
        engine_service.stop(ws)


def test_the_app_stops_the_services_its_pages_and_jobs_started_and_no_other(
    fake_engine, workspace, tiny_model_path, second_tiny_model_path, monkeypatch
):
    """`serve` with a stand-in for Streamlit: a child that starts a service on demand, as a page or a job does."""
    from cai_core import serve

    kept = engine_service.start(workspace, second_tiny_model_path, owner="cli")
    child = f"""
import os, sys
from cai_core import engine_service
from cai_core.workspace import Workspace
engine_service.server_command = lambda model, name, dtype, port: [sys.executable, {FAKE_SERVER!r},
    "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
engine_service.start(Workspace.from_env(), {tiny_model_path!r})
os._exit(0)  # as Streamlit ends on a SIGTERM: no exit handler of its own stops the service
"""
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    monkeypatch.setattr(serve, "streamlit_command", lambda *a, **k: [sys.executable, "-c", child])
    assert serve.serve(workspace) == 0
    assert [s.pid for s in engine_service.running(workspace)] == [kept.pid]
