"""Long work in the background: a job's folder is its whole state.

DuckDB lets one process hold a database file, and the app holds ours. So a job never opens it:
it appends its records to JSON-lines files in its own folder (flushed and fsynced per batch) and
the store ingests them later, idempotently (see `Store.ingest`). The same files tell a restarted
job what is already done, so a kill at any moment, `kill -9` included, loses at most the batch
in flight and never stores a step twice.

    runs/<run_id>/run.json         what the job is (kind, model, config, constitution)
    runs/<run_id>/<table>.jsonl    records, one JSON object a line
    runs/<run_id>/progress.json    done / total / status, rewritten atomically
    runs/<run_id>/cancel           present when someone asked the job to stop
    runs/<run_id>/log.txt          the job's own output when launched in the background
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .records import now
from .workspace import Workspace

STATUSES = ("pending", "running", "done", "failed", "cancelled")


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Progress:
    status: str
    done: int
    total: int
    message: str = ""
    pid: int | None = None
    updated_at: float = 0.0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class JobFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.run_id = self.path.name

    # --- identity ----------------------------------------------------------------------------

    @classmethod
    def create(cls, runs_dir: Path, run_id: str, spec: dict) -> JobFolder:
        folder = cls(Path(runs_dir) / run_id)
        folder.path.mkdir(parents=True, exist_ok=True)
        if not (folder.path / "run.json").exists():
            write_json_atomic(folder.path / "run.json", {"run_id": run_id, "created_at": now(), **spec})
            folder.set_progress("pending", 0, 0)
        return folder

    @property
    def spec(self) -> dict:
        return json.loads((self.path / "run.json").read_text(encoding="utf-8"))

    # --- records -----------------------------------------------------------------------------

    def records_path(self, table: str) -> Path:
        return self.path / f"{table}.jsonl"

    def append(self, table: str, rows: list[dict]) -> None:
        if not rows:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        with open(self.records_path(table), "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

    def read(self, table: str) -> list[dict]:
        """Every complete record; a line cut short by a kill is not a record."""
        path = self.records_path(table)
        if not path.exists():
            return []
        data = path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]

    def has_input(self, name: str) -> bool:
        return (self.path / f"{name}.jsonl").exists()

    def write_input(self, name: str, rows: list[dict]) -> None:
        """Copy a job's input into its folder once, when it is prepared, so that a resumed job works through
        the same items even if their source has changed since. Written whole or not at all. Not a spooled
        table: the store never ingests it."""
        if self.has_input(name):
            return
        staging = self.path / f".{name}.jsonl.tmp"
        staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        staging.replace(self.path / f"{name}.jsonl")

    def read_input(self, name: str) -> list[dict]:
        text = (self.path / f"{name}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    def repair(self) -> None:
        """Cut a torn last line (a kill mid-write) so that appends start on a fresh line."""
        for path in self.path.glob("*.jsonl"):
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                with open(path, "r+b") as f:
                    f.truncate(end)

    def record_engines(self, **backends) -> None:
        """Note which engine runs each of the job's models (`policy=backend, ...`) in run.json, as
        `engines: {role: [engine, ...]}`: a job resumed on another engine adds that engine to the list."""
        spec = self.spec
        engines = {role: list(seen) for role, seen in spec.get("engines", {}).items()}
        for role, backend in backends.items():
            seen = engines.setdefault(role, [])
            engine = getattr(backend, "engine", type(backend).__name__)  # a backend of the caller's own making
            if not seen or seen[-1] != engine:
                seen.append(engine)
        if engines != spec.get("engines"):
            write_json_atomic(self.path / "run.json", {**spec, "engines": engines})

    def engines(self) -> str:
        """Which engines ran the job's models, for display: "vllm", "vllm, then hf", or per model when they
        differ ("policy vllm; judge hf"); "" before any model was loaded."""
        engines = self.spec.get("engines", {})
        if len({tuple(seen) for seen in engines.values()}) == 1:
            return ", then ".join(next(iter(engines.values())))
        return "; ".join(f"{role} {', then '.join(seen)}" for role, seen in engines.items())

    # --- progress and control ----------------------------------------------------------------

    def set_progress(self, status: str, done: int, total: int, message: str = "") -> None:
        assert status in STATUSES, status
        write_json_atomic(
            self.path / "progress.json",
            {
                "status": status,
                "done": done,
                "total": total,
                "message": message,
                "pid": os.getpid(),
                "updated_at": now(),
            },
        )

    def progress(self) -> Progress:
        try:
            data = json.loads((self.path / "progress.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return Progress("pending", 0, 0)
        progress = Progress(**data)
        if progress.status == "running" and progress.pid and not _alive(progress.pid):
            return Progress(
                "failed",
                progress.done,
                progress.total,
                "the job's process died; run it again to resume",
                progress.pid,
                progress.updated_at,
            )
        return progress

    def request_cancel(self) -> None:
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()

    def clear_cancel(self) -> None:
        (self.path / "cancel").unlink(missing_ok=True)

    def launch(self, argv: list[str]) -> subprocess.Popen:
        """Run `python -m cai_core.cli ARGV` detached: closing the page or the app does not stop it."""
        return self.start([sys.executable, "-m", "cai_core.cli", *argv])

    def resume_in_background(self, workspace: Workspace) -> subprocess.Popen:
        """`cai resume RUN_ID` detached: a new job starts, a stopped one continues."""
        return self.launch([*workspace.cli_args(), "resume", self.run_id])

    def start(self, command: list[str]) -> subprocess.Popen:
        """Run any command detached, its output appended to the job's log."""
        log = open(self.path / "log.txt", "ab")  # noqa: SIM115 - handed to the child, which outlives us
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def log_tail(self, max_bytes: int = 4000) -> str:
        path = self.path / "log.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", errors="replace")


def run_id_for(prefix: str, identity: dict) -> str:
    """A run's default id: a hash of everything that defines it, so the same command again finds (and
    resumes) the same run."""
    return f"{prefix}-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


@contextmanager
def ending_on_failure(report: Callable[[str, str], object]) -> Iterator[None]:
    """Let an exception that ends a job write its last status (failed; cancelled for Ctrl-C) with the reason,
    then go on: the job folder says why it stopped, and the caller still sees the error."""
    try:
        yield
    except BaseException as exc:
        report("cancelled" if isinstance(exc, KeyboardInterrupt) else "failed", f"{type(exc).__name__}: {exc}")
        raise


def list_job_folders(runs_dir: Path) -> list[JobFolder]:
    if not Path(runs_dir).exists():
        return []
    return sorted(
        (JobFolder(p) for p in Path(runs_dir).iterdir() if (p / "run.json").exists()),
        key=lambda j: j.path.stat().st_mtime,
        reverse=True,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own finished child, not yet reaped) is not running either.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
