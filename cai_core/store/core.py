"""Opening the database, applying its migrations (`schema`), and the statements and write lock every concern uses.

Writes: DuckDB lets one process hold the file, and inside it each session (a page run, a thread) has its
own connection. Two transactions that touch the same row fail one commit ("Conflict on update", or a
duplicate key at COMMIT), and a count read in one transaction is stale in another (an annotator's queue).
So every write in this process goes through `_write`, which holds the database's lock from BEGIN to
COMMIT: writes are serialised, reads never wait, and a read inside `_write` is exact.

Between processes (the app, `cai` commands) the file is held under a lock of ours (`cai.duckdb.lock`, see
`_held`) from before DuckDB opens it until after DuckDB has closed it. DuckDB's own lock does not cover its
close: a process opening the file while another was still closing it (checkpointing, removing its WAL) lost
a transaction the closing process had committed, about 2 saves in 1,000 with 20 processes on one file.

A new database is made under a temporary name and renamed into place once its schema is committed, so that a
first open that fails (a full disk) leaves no file that cannot be opened.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self, TypeVar

import duckdb
import pandas as pd

from ..records import now
from ..workspace import Workspace
from .schema import MIGRATIONS


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message names the file."""


_write_locks: dict[Path, threading.RLock] = {}
# What `_reused` keeps: per database id, its data's version and the results computed on it; a few entries each
# (the filters sessions have open), for a few databases (the app has one; tests make many)
_reused_results: dict[str, tuple[int, dict]] = {}
_reused_guard = threading.Lock()
REUSED_PER_DATABASE = 32
REUSED_DATABASES = 4
T = TypeVar("T")
_write_locks_guard = threading.Lock()


def _write_lock(path: Path) -> threading.RLock:
    with _write_locks_guard:
        return _write_locks.setdefault(path.resolve(), threading.RLock())


class StoreCore:
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path):
        self.con = con
        self.path = path
        self._lock = _write_lock(path)
        self._writing = False

    @classmethod
    @contextmanager
    def open(cls, workspace: Workspace | str | Path, *, wait_seconds: float = 10.0) -> Iterator[Self]:
        path = workspace.db_path if isinstance(workspace, Workspace) else Path(workspace)
        _check_folder(path)
        with _held(path, wait_seconds):
            if _absent(path):
                cls._create(path, wait_seconds)
            con = _connect(path, wait_seconds)
            store = cls(con, path)
            try:
                store.migrate()
                yield store
            except (duckdb.IOException, duckdb.TransactionException) as exc:  # disk full, a failed commit, ...
                raise StoreError(f"database {path}: {str(exc).splitlines()[0]}") from None
            finally:
                con.close()

    @classmethod
    def _create(cls, path: Path, wait_seconds: float) -> None:
        """Make the database at PATH whole or not at all: under a temporary name, renamed into place once its
        schema is committed and checkpointed."""
        staging = path.with_name(f".{path.name}.creating-{os.getpid()}")
        try:
            con = _connect(staging, wait_seconds)
            try:
                cls(con, staging).migrate()
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(staging, path)
        except (duckdb.Error, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
            raise StoreError(f"cannot create database {path}: {reason}") from None
        finally:
            for leftover in (staging, staging.with_name(staging.name + ".wal")):
                leftover.unlink(missing_ok=True)

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        created = self._one("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_migrations'")[0]
        if created and self.schema_version == len(MIGRATIONS):
            return  # the common case: nothing to apply, no write lock taken
        with self._write():
            self._exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE)")
            applied = self._one("SELECT coalesce(max(version), 0) FROM schema_migrations")[0]
            for version, sql in enumerate(MIGRATIONS[applied:], start=applied + 1):
                self._exec(sql)
                self._exec("INSERT INTO schema_migrations VALUES (?, ?)", [version, now()])

    @property
    def schema_version(self) -> int:
        return self._one("SELECT max(version) FROM schema_migrations")[0]

    # --- the statements every concern uses ------------------------------------------------------

    def _exec(self, sql: str, params: list | None = None) -> None:
        self.con.execute(sql, params or []).fetchall()

    def _one(self, sql: str, params: list | None = None) -> tuple | None:
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    def _count(self, table: str) -> int:
        return self._one(f"SELECT count(*) FROM {table}")[0]

    @contextmanager
    def _write(self, changes_data: bool = True):
        """One transaction under this process's write lock for the database file (see the module docstring).
        Nested calls join the outer transaction. A write of the store's own bookkeeping, which no query's result
        reads (`changes_data=False`), keeps what was computed before."""
        if self._writing:
            yield
            return
        with self._lock:
            self._exec("BEGIN TRANSACTION")
            self._writing = True
            try:
                yield
                if changes_data:
                    self._exec("UPDATE data_version SET version = version + 1")  # what was computed before is stale
            except BaseException:
                self._exec("ROLLBACK")
                raise
            finally:
                self._writing = False
            self._exec("COMMIT")  # a failed commit has already ended the transaction: nothing to roll back

    def _reused(self, key: tuple, compute: Callable[[], T]) -> T:
        """compute(), or what it returned for KEY before, in any session of this process, on the same version of
        this database's data (a page's redraw with nothing new recomputes nothing: a count over 1M labels is a
        quarter second). The version is read before computing, so a result is never older than its version.
        Inside a write the data is not committed yet: computed afresh, kept nowhere. Other sessions share what is
        kept: a DataFrame is handed out as a copy, and other results must not be changed by their callers."""
        if self._writing:
            return compute()
        database, version = self._one("SELECT database_id, version FROM data_version")
        with _reused_guard:
            kept = _reused_results.get(database)
            if kept and kept[0] == version and key in kept[1]:
                return _handed_out(kept[1][key])
        result = compute()
        with _reused_guard:
            kept = _reused_results.pop(database, None)
            if kept is None or kept[0] < version:
                kept = (version, {})
            if kept[0] == version:
                if len(kept[1]) >= REUSED_PER_DATABASE:
                    del kept[1][next(iter(kept[1]))]  # the oldest: a session's filters moved on from it
                kept[1][key] = result
            _reused_results[database] = kept  # the most recently used database last
            while len(_reused_results) > REUSED_DATABASES:
                del _reused_results[next(iter(_reused_results))]
        return _handed_out(result)

    def _insert_frame(self, verb: str, table: str, frame: pd.DataFrame) -> None:
        """`verb` (INSERT OR IGNORE, INSERT OR REPLACE) every row of a frame whose columns are the table's."""
        cols = ", ".join(frame.columns)
        self.con.register("incoming", frame)
        try:
            self._exec(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM incoming")
        finally:
            self.con.unregister("incoming")

    def counts(self) -> dict[str, int]:
        return {
            table: self._count(table)
            for table in ("constitution_versions", "runs", "traces", "trace_steps", "ai_labels")
        }


def _handed_out(result):
    return result.copy() if isinstance(result, pd.DataFrame) else result


def _check_folder(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise StoreError(f"database path {path} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for database {path}: {exc.strerror}") from None


def _absent(path: Path) -> bool:
    """No database yet: no file, or an empty one with no WAL (what a first open on a full disk left before
    databases were created under a temporary name): it holds nothing, and is made anew."""
    try:
        return path.stat().st_size == 0 and not path.with_name(path.name + ".wal").exists()
    except FileNotFoundError:
        return True


_held_files: dict[Path, list] = {}  # database file -> [lock file descriptor, how many opens in this process hold it]
_held_guard = threading.Lock()


@contextmanager
def _held(path: Path, wait_seconds: float) -> Iterator[None]:
    """Hold the database file against other processes while this one has it open (see the module docstring).
    The sessions of one process share DuckDB's instance of the file, so they share the hold: the first open
    takes it, the last close gives it back. An flock: released by the system when the process ends."""
    key = path.resolve()
    with _held_guard:
        held = _held_files.get(key)
        if held is None:
            held = _held_files[key] = [_lock_file(path, wait_seconds), 0]
        held[1] += 1
    try:
        yield
    finally:
        with _held_guard:
            held[1] -= 1
            if not held[1]:
                del _held_files[key]
                os.close(held[0])  # releases the lock


def _lock_file(path: Path, wait_seconds: float) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: its lock file {lock_path.name}: {exc.strerror}") from None
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.02)  # another process has it for a moment; connections here are short
                continue
            os.close(fd)
            raise StoreError(f"database {path} is held by another process") from None


def _connect(path: Path, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" in message.lower() and time.monotonic() < deadline:
                time.sleep(0.2)  # another process holds it for a moment; connections here are short
                continue
            if "lock" in message.lower():
                raise StoreError(f"database {path} is held by another process: {message.splitlines()[0]}") from None
            raise StoreError(f"cannot open database {path}: {message.splitlines()[0]}") from None
