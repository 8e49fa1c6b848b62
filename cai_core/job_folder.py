"""A job's folder is its whole state; `JobFolder` reads and writes it, and nothing else does.

DuckDB lets one process hold a database file, and the app holds ours. So a job never opens it:
it appends its records to JSON-lines files in its own folder (flushed and fsynced per batch) and
the store ingests them later, idempotently (see `Store.ingest`). The same files tell a restarted
job what is already done, so a kill at any moment, `kill -9` included, loses at most the batches
in flight and never stores a step twice.

    runs/<run_id>/run.json         what the job is (kind, model, config, constitution)
    runs/<run_id>/<table>.jsonl    records, one JSON object a line
    runs/<run_id>/progress.json    status, done / total, rate, ETA, engine; rewritten atomically
    runs/<run_id>/cancel           present when someone asked the job to stop
    runs/<run_id>/lock             locked (flock) by the one process working on the job
    runs/<run_id>/log.txt          the job's own output when launched in the background

The cancel rule: a cancel made while a job is pending (launched, not yet begun) or running wins; a
cancel file found on a stopped run (done, failed, cancelled) is an old request, and an explicit
resume clears it. Launching a job marks it pending first, so a cancel made in the moment between a
click on Resume and the start of its process is not mistaken for an old one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .auth import child_environment, require_operator
from .records import now
from .workspace import write_file_atomically

STATUSES = ("pending", "running", "done", "failed", "cancelled")
DISK_LOW_BYTES = 64 * 1024  # less free space than this where a job died: the disk filled up under it


def write_json_atomic(path: Path, data: dict) -> None:
    write_file_atomically(path, lambda out: out.write(json.dumps(data, ensure_ascii=False, indent=1).encode()))


class Cancelled(Exception):
    """Raised at a cancel point when someone asked the job to stop; the runner records the stop."""


class JobBusy(RuntimeError):
    """Another process is working on the job; the message names the run and that process."""


@dataclass(frozen=True)
class Progress:
    status: str
    done: int
    total: int
    message: str = ""
    pid: int | None = None
    updated_at: float = 0.0
    unit: str = ""  # what done and total count: steps, labels, comparisons
    rate: float | None = None  # units a second since this process began, when it has done some
    eta: float | None = None  # seconds left at that rate
    elapsed: float | None = None  # seconds since this process began the job
    engine: str = ""  # the backend and model the job runs on, once loaded

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def summary(self) -> str:
        """done/total, then the rate, elapsed time and ETA where known: what a page or `cai jobs` shows."""
        parts = [f"{self.done}/{self.total} {self.unit}s" if self.unit else f"{self.done}/{self.total}"]
        if self.rate:
            parts.append(f"{self.rate:.2f} {self.unit or 'item'}s/s")
        if self.elapsed is not None:
            parts.append(f"{_duration(self.elapsed)} elapsed")
        if self.eta is not None and self.status == "running":
            parts.append(f"about {_duration(self.eta)} left")
        if self.engine:
            parts.append(self.engine)
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class Pace:
    """A job's rate and ETA measured since this process began: a resumed job's earlier work is not its rate."""

    def __init__(self, done: int):
        self.began, self.done_at_start = time.monotonic(), done

    def at(self, done: int, total: int) -> dict:
        """Progress's rate, eta and elapsed once DONE of TOTAL are done."""
        elapsed = time.monotonic() - self.began
        counted = done - self.done_at_start
        rate = counted / elapsed if counted > 0 and elapsed > 0 else None
        return {"rate": rate, "eta": (total - done) / rate if rate else None, "elapsed": elapsed}


_PROGRESS_FIELDS = {f.name for f in dataclasses.fields(Progress)}
_PROGRESS_REQUIRED = {"status": str, "done": int, "total": int}


def _progress_record(path: Path, data) -> Progress:
    """progress.json's object as a Progress, or ValueError naming the file and what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    for name, kind in _PROGRESS_REQUIRED.items():
        if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
            raise ValueError(f"{path}: {name!r} is missing or not a{' text' if kind is str else 'n integer'}")
    if data["status"] not in STATUSES:
        raise ValueError(f"{path}: status {data['status']!r} is not one of {', '.join(STATUSES)}")
    return Progress(**{k: v for k, v in data.items() if k in _PROGRESS_FIELDS})


def identity_settings(settings: dict) -> dict:
    """The settings a run's id is a digest of: not its name, nor the tracker it reports to (the same run resumes
    whichever tracker watches it)."""
    return {**{key: value for key, value in settings.items() if key != "tracker"}, "run_id": None}


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
            folder.set_progress("pending", 0, 0, pid=None)  # no process runs it yet: see `start`
        return folder

    @classmethod
    def prepare(
        cls,
        runs_dir: Path,
        kind: str,
        config,
        identity: dict,
        *,
        model: str,
        constitution=None,
        inputs: dict[str, list[dict]] | None = None,
        prefix: str | None = None,
    ) -> JobFolder:
        """Create (or find) a job's folder. Its id is the config's `run_id` or else `PREFIX-hash` of the config,
        the constitution's version and `identity` (digests of the data it works on), so the same command
        again finds the same run; `inputs` are copied in once (see `write_input`)."""
        settings = dataclasses.asdict(config)
        if constitution is not None:
            identity = {"constitution": constitution.version, **identity}
        run_id = settings.get("run_id") or run_id_for(prefix or kind, {**identity_settings(settings), **identity})
        spec = {"kind": kind, "model": model, "config": {**settings, "run_id": run_id}}
        if constitution is not None:
            spec["constitution"] = constitution.snapshot()
        folder = cls.create(runs_dir, run_id, spec)
        for name, rows in (inputs or {}).items():
            folder.write_input(name, rows)
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
        return list(self.records(table))

    def records(self, table: str) -> Iterator[dict]:
        """`read`, one record at a time: a job of a million records looks back over its spool without holding it."""
        yield from _complete_lines(self.records_path(table))

    def has_input(self, name: str) -> bool:
        return (self.path / f"{name}.jsonl").exists()

    def write_input(self, name: str, rows: list[dict]) -> None:
        """Copy a job's input into its folder once, when it is prepared, so that a resumed job works through
        the same items even if their source has changed since. Written whole or not at all. Not a spooled
        table: the store never ingests it."""
        if self.has_input(name):
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_file_atomically(self.path / f"{name}.jsonl", lambda out: out.write(text.encode("utf-8")))

    def read_input(self, name: str) -> list[dict]:
        return list(self.input_rows(name))

    def input_rows(self, name: str) -> Iterator[dict]:
        """`read_input`, one row at a time."""
        yield from _complete_lines(self.path / f"{name}.jsonl")

    def input_length(self, name: str) -> int:
        """How many rows the input holds, counted without parsing them."""
        with open(self.path / f"{name}.jsonl", "rb") as data:
            return sum(block.count(b"\n") for block in iter(lambda: data.read(1 << 20), b""))

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

    def set_progress(self, status: str, done: int, total: int, message: str = "", **details) -> None:
        """Rewrite progress.json; `details` are Progress's other fields (unit, rate, eta, elapsed, engine)."""
        assert status in STATUSES, status
        unknown = set(details) - _PROGRESS_FIELDS
        assert not unknown, unknown
        write_json_atomic(
            self.path / "progress.json",
            {
                "status": status,
                "done": done,
                "total": total,
                "message": message,
                "pid": os.getpid(),
                "updated_at": now(),
                **details,  # a pid here: the process that will write next (a job being started)
            },
        )

    def progress(self) -> Progress:
        """The job's progress as a page shows it: a job whose process died before it could say so reads failed.
        ValueError naming the file and the field where progress.json cannot be read (listings leave such a job
        out, and ingest quarantines it, as for run.json)."""
        progress = self.recorded_progress()
        if progress.status in ("pending", "running") and progress.pid and not _alive(progress.pid):
            return dataclasses.replace(progress, status="failed", message=self._death(), eta=None)
        return progress

    def recorded_progress(self) -> Progress:
        """progress.json as written: what the process that takes the job's lock goes on from."""
        path = self.path / "progress.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Progress("pending", 0, 0)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not readable as JSON: {exc}") from None
        return _progress_record(path, data)

    def _death(self) -> str:
        """Why the job's process ended without saying so: a full disk leaves it no room to write its status
        (and often none for its log either), so the log's last words and the disk's free space are read."""
        full = "No space left on device" in self.log_tail() or "[Errno 28]" in self.log_tail()
        try:
            stats = os.statvfs(self.path)
            full = full or stats.f_bavail * stats.f_frsize < DISK_LOW_BYTES
        except OSError:
            pass
        if full:
            return f"No space left on device ({self.path}): free some space, then run it again to resume"
        return "the job's process died; run it again to resume"

    def request_cancel(self) -> None:
        require_operator(f"cancel {self.run_id}")
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()

    def clear_cancel(self) -> None:
        (self.path / "cancel").unlink(missing_ok=True)

    def stop_if_cancelled(self) -> None:
        """A cancel point: raise Cancelled when a stop was asked for. Call it where stopping loses no
        spooled work, e.g. between two model calls of a batch."""
        if self.cancel_requested():
            raise Cancelled

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the job's lock while working on it, so that a second start (a double click, two sessions,
        `cai resume` twice) cannot do the same work again: it gets JobBusy. The lock is an flock, which the
        system releases when its process ends, `kill -9` included, so a dead job never keeps its run locked."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.progress().pid
            raise JobBusy(f"run {self.run_id} is already running (process {pid})") from None
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def busy(self) -> bool:
        """Whether a process is working on the job at this moment (holds its lock)."""
        try:
            with self.exclusive():
                return False
        except JobBusy:
            return True

    def start(self, command: list[str]) -> subprocess.Popen:
        """Run any command detached, its output appended to the job's log. The job reads pending until its
        process begins: a cancel made meanwhile is then a new request, which the process honours. Operators
        only; the job runs as the command line does, with none of the app's login settings."""
        require_operator(f"start {self.run_id}")
        progress = self.progress()
        if progress.status != "running":
            self.set_progress("pending", progress.done, progress.total, "starting", unit=progress.unit, pid=None)
        log = open(self.path / "log.txt", "ab")  # noqa: SIM115 - handed to the child, which outlives us
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
            env=child_environment(dict(os.environ)),
        )
        if progress.status != "running":
            # pending now names the process that will run the job: if it dies before it reports (a full disk
            # leaves it no room to), the job reads failed, not pending forever
            self.set_progress("pending", progress.done, progress.total, "starting", unit=progress.unit, pid=process.pid)
        return process

    def log_tail(self, max_bytes: int = 4000) -> str:
        path = self.path / "log.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", errors="replace")


def _complete_lines(path: Path) -> Iterator[dict]:
    """The JSON object of each whole line of a JSON-lines file (none where it does not exist); a last line without
    its newline was cut short by a kill and is left out."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


def digest(value, length: int = 12) -> str:
    """A short hash of JSON-able `value` (a config, a job's inputs): what names a run after what defines it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def run_id_for(prefix: str, identity: dict) -> str:
    """A run's default id: a hash of everything that defines it, so the same command again finds (and
    resumes) the same run."""
    return f"{prefix}-{digest(identity, 10)}"


# A file changed this close to a look at its stat may change again within its file system's timestamp granularity
# (a coarse clock tick; a second or two on some file systems) and keep the same stat: its stat is not trusted until
# it is older than this, so it is read at every look until then (as git does with "racily clean" files).
SETTLED_SECONDS = 2.0


def _now_ns() -> int:
    return time.time_ns()


def job_files_stamp(stats: dict[str, os.stat_result]) -> str | None:
    """What a job's run.json and progress.json are, by their stat (`stats`, by file name): inode, size, modified and
    changed times in ns, so a file replaced or rewritten differs in one, even when its modified time was set back.
    None while either is missing or changed too recently to trust (`SETTLED_SECONDS`): read it again."""
    settled_before = _now_ns() - int(SETTLED_SECONDS * 1e9)
    if set(stats) != {"run.json", "progress.json"} or any(
        max(s.st_mtime_ns, s.st_ctime_ns) >= settled_before for s in stats.values()
    ):
        return None
    return " ".join(f"{s.st_ino}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}" for _, s in sorted(stats.items()))


def _readable_kind(folder: Path) -> str | None:
    """The kind of the job in FOLDER when its run.json says what the job is and its progress.json can be read; None
    for any other, which listings leave out: ingest quarantines it with its reason (`Store.ingest_problems`), and the
    home page and `cai jobs` name it."""
    job = JobFolder(folder)
    try:
        spec = job.spec
        if not (isinstance(spec, dict) and isinstance(spec.get("kind"), str) and isinstance(spec.get("config"), dict)):
            return None
        job.recorded_progress()
    except (OSError, ValueError):
        return None
    return spec["kind"]


# Per runs folder listed: each job folder's files' stamp and what they said (its kind, or None: unreadable). Every
# page lists its kind of job several times a redraw; a finished job's two files are read once, not at each listing.
# Only the folders of the last listing are kept, for the last few runs folders listed.
_kinds_read: dict[Path, dict[str, tuple[str, str | None]]] = {}
_kinds_read_guard = threading.Lock()
RUNS_FOLDERS_KEPT = 8


def _job_kinds(runs_dir: Path) -> list[tuple[Path, float, str | None]]:
    """Each job folder holding a run.json in RUNS_DIR: its path, modified time and readable kind (`_readable_kind`),
    the files read again only where their stamp changed or is not yet trusted."""
    with _kinds_read_guard:
        known = _kinds_read.get(runs_dir, {})
    listed, seen = [], {}
    with os.scandir(runs_dir) as entries:
        for entry in entries:
            stats = {}
            for name in ("run.json", "progress.json"):
                with suppress(FileNotFoundError, NotADirectoryError):  # no job folder, or not yet one
                    stats[name] = os.stat(os.path.join(entry.path, name))
            if "run.json" not in stats:
                continue
            try:
                modified = entry.stat().st_mtime
            except FileNotFoundError:  # removed since it was listed
                continue
            stamp = job_files_stamp(stats)
            kept = known.get(entry.name)
            if stamp is not None and kept is not None and kept[0] == stamp:
                kind = kept[1]
            else:
                kind = _readable_kind(Path(entry.path))
            if stamp is not None:
                seen[entry.name] = (stamp, kind)
            listed.append((Path(entry.path), modified, kind))
    with _kinds_read_guard:
        _kinds_read.pop(runs_dir, None)
        _kinds_read[runs_dir] = seen  # the most recently listed last
        while len(_kinds_read) > RUNS_FOLDERS_KEPT:
            del _kinds_read[next(iter(_kinds_read))]
    return listed


def list_job_folders(
    runs_dir: Path, *, unreadable: bool = False, kinds: Collection[str] | None = None
) -> list[JobFolder]:
    """Job folders, newest first; with `unreadable`, also those whose run.json cannot be read (for ingest, which
    quarantines them); with `kinds`, only (readable) jobs of those kinds. A finished job's run.json and
    progress.json are read once while their stat stays the same (`job_files_stamp`), not at every listing."""
    runs_dir = Path(runs_dir)
    if not runs_dir.exists():
        return []
    if unreadable and kinds is None:  # ingest reads each job's files itself, and only when their stamp changed
        listed = [(p, p.stat().st_mtime) for p in runs_dir.iterdir() if (p / "run.json").exists()]
    else:
        listed = [
            (path, modified)
            for path, modified, kind in _job_kinds(runs_dir)
            if (kind is not None or unreadable) and (kinds is None or kind in kinds)
        ]
    return [JobFolder(path) for path, _ in sorted(listed, key=lambda pair: pair[1], reverse=True)]


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
