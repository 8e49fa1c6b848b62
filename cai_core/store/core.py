"""Opening the database, its schema and migrations, and ingest: copying what jobs spooled into the tables.

Ingest is idempotent (primary keys + INSERT OR IGNORE, and a per-file byte offset so that each line is
read once). A line that is not a record of its table (bad JSON, a wrong field, a wrong type) is
quarantined: kept out, recorded in `ingest_problems` with its file and line, and skipped, so one bad
line never stops the other jobs. A job whose run.json cannot be read is quarantined whole. Only a torn
last line (no newline yet) waits for its writer.

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
import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Self

import duckdb
import pandas as pd

from ..jobs import JobFolder, list_job_folders
from ..records import (
    PAIR_SOURCES,
    AILabel,
    CalibrationPrior,
    EvalAnswer,
    EvalJudgment,
    IngestProblem,
    Pair,
    RoundJudgment,
    Run,
    StoredCalibration,
    Trace,
    TraceStep,
    TrainedModel,
    TrainMetric,
    columns,
    now,
)
from ..workspace import Workspace


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message names the file."""


MIGRATIONS: list[str] = [
    # 1: constitutions, runs, traces
    """
    CREATE TABLE constitution_saves (
        save_id BIGINT PRIMARY KEY, path TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
        content TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', saved_at DOUBLE NOT NULL);
    CREATE TABLE constitution_versions (
        version TEXT PRIMARY KEY, name TEXT NOT NULL, content TEXT NOT NULL, first_seen DOUBLE NOT NULL);
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL, model TEXT NOT NULL,
        constitution_name TEXT, constitution_version TEXT, status TEXT NOT NULL, done BIGINT NOT NULL,
        total BIGINT NOT NULL, message TEXT NOT NULL, created_at DOUBLE NOT NULL, updated_at DOUBLE NOT NULL);
    CREATE TABLE traces (
        trace_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, prompt_id TEXT NOT NULL, prompt TEXT NOT NULL,
        category TEXT NOT NULL, sample_index INTEGER NOT NULL, model TEXT NOT NULL,
        constitution_name TEXT NOT NULL, constitution_version TEXT NOT NULL, created_at DOUBLE NOT NULL);
    CREATE TABLE trace_steps (
        trace_id TEXT NOT NULL, round INTEGER NOT NULL, principle_id TEXT, critique TEXT, response TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL, critique_tokens INTEGER NOT NULL, response_tokens INTEGER NOT NULL,
        seconds DOUBLE NOT NULL, stopped BOOLEAN NOT NULL, created_at DOUBLE NOT NULL,
        PRIMARY KEY (trace_id, round));
    CREATE TABLE ingest_offsets (path TEXT PRIMARY KEY, bytes BIGINT NOT NULL);
    CREATE INDEX traces_run ON traces (run_id);
    """,
    # 2: people's verdicts on trace rounds
    """
    CREATE TABLE step_verdicts (
        trace_id TEXT NOT NULL, round INTEGER NOT NULL, annotator TEXT NOT NULL,
        revision_verdict TEXT CHECK (revision_verdict IN ('better', 'same', 'worse')),
        critique_verdict TEXT CHECK (critique_verdict IN ('valid', 'invalid')),
        note TEXT NOT NULL, updated_at DOUBLE NOT NULL,
        PRIMARY KEY (trace_id, round, annotator));
    """,
    # 3: RLAIF: response pairs, AI judges' soft labels, people's labels
    """
    CREATE TABLE pairs (
        pair_id TEXT PRIMARY KEY, prompt TEXT NOT NULL, response_a TEXT NOT NULL, response_b TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('sampled', 'sl-cai', 'import')), origin TEXT NOT NULL,
        origin_index INTEGER NOT NULL, origin_a TEXT NOT NULL, origin_b TEXT NOT NULL, created_at DOUBLE NOT NULL);
    CREATE TABLE ai_labels (
        run_id TEXT NOT NULL, pair_id TEXT NOT NULL, principle_id TEXT NOT NULL, judge_model TEXT NOT NULL,
        constitution_version TEXT NOT NULL, strategy TEXT NOT NULL, method TEXT NOT NULL, cot BOOLEAN NOT NULL,
        few_shot INTEGER NOT NULL, p_order1 DOUBLE, p_order2 DOUBLE, p_a DOUBLE, failed BOOLEAN NOT NULL,
        reasoning_1 TEXT, reasoning_2 TEXT, seconds DOUBLE NOT NULL, created_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, pair_id, principle_id));
    CREATE TABLE human_labels (
        pair_id TEXT NOT NULL, annotator TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
        shown_swapped BOOLEAN NOT NULL, rationale TEXT NOT NULL, created_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL, PRIMARY KEY (pair_id, annotator));
    """,
    # 4: training runs' logged metrics and where their models are
    """
    CREATE TABLE train_metrics (
        run_id TEXT NOT NULL, step BIGINT NOT NULL, name TEXT NOT NULL, value DOUBLE NOT NULL,
        created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, step, name));
    CREATE TABLE trained_models (
        run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL, base_model TEXT NOT NULL,
        step BIGINT NOT NULL, created_at DOUBLE NOT NULL);
    """,
    # 5: evaluation: answers per (prompt, wrapper, model), pairwise judgments, SL-CAI round judgments
    """
    CREATE TABLE eval_answers (
        run_id TEXT NOT NULL, prompt_key TEXT NOT NULL, wrapper TEXT NOT NULL, model TEXT NOT NULL,
        set_name TEXT NOT NULL, prompt TEXT NOT NULL, sent TEXT NOT NULL, category TEXT NOT NULL,
        label TEXT NOT NULL CHECK (label IN ('harmful', 'benign')), answer TEXT NOT NULL, refused BOOLEAN NOT NULL,
        tokens INTEGER NOT NULL, seconds DOUBLE NOT NULL, created_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, prompt_key, wrapper, model));
    CREATE TABLE eval_judgments (
        run_id TEXT NOT NULL, prompt_key TEXT NOT NULL, wrapper TEXT NOT NULL, aspect TEXT NOT NULL,
        model_a TEXT NOT NULL, model_b TEXT NOT NULL, principle_id TEXT NOT NULL, p_order1 DOUBLE, p_order2 DOUBLE,
        p_a DOUBLE, failed BOOLEAN NOT NULL, judge_model TEXT NOT NULL, constitution_version TEXT NOT NULL,
        created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, prompt_key, wrapper, aspect, model_a, model_b));
    CREATE TABLE round_judgments (
        run_id TEXT NOT NULL, trace_id TEXT NOT NULL, round INTEGER NOT NULL, versus_round INTEGER NOT NULL,
        revision_principle_id TEXT NOT NULL, judge_principle_id TEXT NOT NULL, p_order1 DOUBLE, p_order2 DOUBLE,
        p_later DOUBLE, failed BOOLEAN NOT NULL, judge_model TEXT NOT NULL, constitution_version TEXT NOT NULL,
        created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, trace_id, round, versus_round));
    """,
    # 6: refusals read by a judge keep its probability
    """
    ALTER TABLE eval_answers ADD COLUMN refusal_p DOUBLE;
    """,
    # 7: what ingest could not read (a line or a whole job), and the pair each annotator has on screen
    """
    CREATE TABLE ingest_problems (
        path TEXT NOT NULL, line BIGINT NOT NULL, problem TEXT NOT NULL, seen_at DOUBLE NOT NULL,
        PRIMARY KEY (path, line));
    CREATE TABLE annotation_claims (annotator TEXT PRIMARY KEY, pair_id TEXT NOT NULL, claimed_at DOUBLE NOT NULL);
    """,
    # 8: a trace says what went wrong on the way in (a prompt cut to fit the model's context)
    """
    ALTER TABLE traces ADD COLUMN warning TEXT;
    """,
    # 9: the judge audit: calibrations of a judge (its priors per principle and order, a Platt fit, the
    # before/after report), the frozen contest scores of a disagreement-first queue, and what it served
    """
    CREATE TABLE judge_calibrations (
        calibration_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, judge_model TEXT NOT NULL,
        constitution_version TEXT NOT NULL, slope DOUBLE NOT NULL, bias DOUBLE NOT NULL, report TEXT NOT NULL,
        created_at DOUBLE NOT NULL);
    CREATE TABLE calibration_priors (
        calibration_id TEXT NOT NULL, principle_id TEXT NOT NULL, prior_order1 DOUBLE NOT NULL,
        prior_order2 DOUBLE NOT NULL, PRIMARY KEY (calibration_id, principle_id));
    CREATE TABLE queue_scores (
        run_id TEXT NOT NULL, pair_id TEXT NOT NULL, score DOUBLE NOT NULL, queue_key DOUBLE NOT NULL,
        scored_at DOUBLE NOT NULL, PRIMARY KEY (run_id, pair_id));
    CREATE TABLE queue_served (
        run_id TEXT NOT NULL, pair_id TEXT NOT NULL, annotator TEXT NOT NULL, served_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, pair_id, annotator));
    """,
    # 10: an annotator holds a few pairs at once (the Annotate page shows the next ones without a round trip)
    """
    CREATE TABLE annotation_claims_held (
        annotator TEXT NOT NULL, pair_id TEXT NOT NULL, claimed_at DOUBLE NOT NULL, PRIMARY KEY (annotator, pair_id));
    INSERT INTO annotation_claims_held SELECT annotator, pair_id, claimed_at FROM annotation_claims;
    DROP TABLE annotation_claims;
    ALTER TABLE annotation_claims_held RENAME TO annotation_claims;
    """,
    # 11: who imported a person's label ('' where the person saved it in the app): an import corrects its own
    # labels only, never one someone saved or another importer's
    """
    ALTER TABLE human_labels ADD COLUMN imported_by TEXT DEFAULT '';
    """,
]


# Tables a job may spool into, with the record type that fixes their columns.
SPOOLED_TABLES = {
    "traces": Trace,
    "trace_steps": TraceStep,
    "pairs": Pair,
    "ai_labels": AILabel,
    "train_metrics": TrainMetric,
    "trained_models": TrainedModel,
    "eval_answers": EvalAnswer,
    "eval_judgments": EvalJudgment,
    "round_judgments": RoundJudgment,
    "judge_calibrations": StoredCalibration,
    "calibration_priors": CalibrationPrior,
}
# Spooled tables where a record may be written again with a new value, the later one true: a training step
# logged again after a resume replaces the one logged before the kill (its checkpoint never saw it).
LATEST_WINS = {
    "train_metrics": ["run_id", "step", "name"],
    # a calibration run again (its job's folder removed, say) measures its priors afresh: the new ones hold
    "judge_calibrations": ["calibration_id"],
    "calibration_priors": ["calibration_id", "principle_id"],
}
# The schema's CHECKs on spooled columns, tested per line so that one bad value is one quarantined line.
CHECKED_VALUES = {("pairs", "source"): PAIR_SOURCES, ("eval_answers", "label"): ("harmful", "benign")}

_write_locks: dict[Path, threading.RLock] = {}
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
    def _write(self):
        """One transaction under this process's write lock for the database file (see the module docstring).
        Nested calls join the outer transaction."""
        if self._writing:
            yield
            return
        with self._lock:
            self._exec("BEGIN TRANSACTION")
            self._writing = True
            try:
                yield
            except BaseException:
                self._exec("ROLLBACK")
                raise
            finally:
                self._writing = False
            self._exec("COMMIT")  # a failed commit has already ended the transaction: nothing to roll back

    def _insert_frame(self, verb: str, table: str, frame: pd.DataFrame) -> None:
        """`verb` (INSERT OR IGNORE, INSERT OR REPLACE) every row of a frame whose columns are the table's."""
        cols = ", ".join(frame.columns)
        self.con.register("incoming", frame)
        try:
            self._exec(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM incoming")
        finally:
            self.con.unregister("incoming")

    # --- ingest ------------------------------------------------------------------------------

    def ingest(self, runs_dir: Path) -> int:
        """Copy every job's new records in; returns how many rows were new. Safe to call anytime, from any
        number of sessions at once; what cannot be read is quarantined (see `ingest_problems`). With nothing
        new it costs three queries and a stat per file, and writes nothing."""
        runs = {row[0]: row for row in self.con.execute(f"SELECT {', '.join(columns(Run))} FROM runs").fetchall()}
        offsets = dict(self.con.execute("SELECT path, bytes FROM ingest_offsets").fetchall())
        job_problems = dict(  # what is known to be wrong with run.json and progress.json files
            ((path, line), problem)
            for path, line, problem in self.con.execute(
                "SELECT path, line, problem FROM ingest_problems WHERE path LIKE '%.json'"
            ).fetchall()
        )
        added = 0
        for job in list_job_folders(runs_dir, unreadable=True):
            try:
                run, constitution = _run_record(job)
            except BadJobFile as exc:
                if job_problems.get((str(exc.path.resolve()), exc.line)) != exc.problem:  # not written twice
                    with self._write():
                        self._quarantine(exc.path, exc.line, exc.problem)
                continue
            grown = [
                (table, path)
                for table in SPOOLED_TABLES
                if (path := job.records_path(table)).exists()
                and path.stat().st_size > offsets.get(str(path.resolve()), 0)
            ]
            if runs.get(run.run_id) != tuple(run.__dict__.values()):
                self._store_run(job, run, constitution)
            added += sum(self._ingest_file(path, table) for table, path in grown)
        return added

    def _store_run(self, job: JobFolder, run: Run, constitution: dict | None) -> None:
        with self._write():
            if constitution:
                self._exec(
                    "INSERT OR IGNORE INTO constitution_versions VALUES (?, ?, ?, ?)",
                    [constitution["version"], constitution["name"], constitution["content"], run.created_at],
                )
            self._exec(
                f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(columns(Run)))})",
                list(run.__dict__.values()),
            )
            self._exec(  # the job reads again: what was wrong with its files has been fixed
                "DELETE FROM ingest_problems WHERE path IN (?, ?)",
                [str((job.path / name).resolve()) for name in ("run.json", "progress.json")],
            )

    def _ingest_file(self, path: Path, table: str) -> int:
        """Read a file's lines past its stored offset into its table. The offset is read under the write lock:
        another session may have just read the same lines."""
        key = str(path.resolve())
        with self._lock:
            row = self._one("SELECT bytes FROM ingest_offsets WHERE path = ?", [key])
            offset = row[0] if row else 0
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            chunk = chunk[: chunk.rfind(b"\n") + 1]  # a torn last line waits for its writer
            if not chunk:
                return 0
            record_type = SPOOLED_TABLES[table]
            first_line = None  # the file's line number of the chunk's first line, counted only when needed
            rows, problems = [], []
            for n, line in enumerate(chunk.split(b"\n")[:-1]):
                if not line.strip():
                    continue
                try:
                    rows.append(_record_row(line, table, record_type))
                except ValueError as exc:
                    first_line = first_line or _line_number(path, offset)
                    problems.append((first_line + n, str(exc)))
            try:
                with self._write():
                    before = self._count(table)
                    if rows:
                        frame, verb = pd.DataFrame(rows, columns=columns(record_type)), "INSERT OR IGNORE"
                        if table in LATEST_WINS:
                            frame, verb = frame.drop_duplicates(LATEST_WINS[table], keep="last"), "INSERT OR REPLACE"
                        self._insert_frame(verb, table, frame)
                    for line, problem in problems:
                        self._quarantine(path, line, problem)
                    self._exec("INSERT OR REPLACE INTO ingest_offsets VALUES (?, ?)", [key, offset + len(chunk)])
                    return self._count(table) - before
            except (duckdb.ConstraintException, duckdb.ConversionException, duckdb.InvalidInputException) as exc:
                # what the per-line checks did not foresee: keep the whole chunk out, named, and go on
                first_line = first_line or _line_number(path, offset)
                last_line = first_line + chunk.count(b"\n") - 1
                with self._write():
                    self._quarantine(path, first_line, f"lines {first_line}-{last_line}: {str(exc).splitlines()[0]}")
                    self._exec("INSERT OR REPLACE INTO ingest_offsets VALUES (?, ?)", [key, offset + len(chunk)])
                return 0

    def _quarantine(self, path: Path, line: int, problem: str) -> None:
        self._exec(
            "INSERT OR REPLACE INTO ingest_problems VALUES (?, ?, ?, ?)", [str(path.resolve()), line, problem, now()]
        )

    def ingest_problems(self) -> list[IngestProblem]:
        """What ingest kept out, newest first: each names its file and line (0: the whole file)."""
        rows = self.con.execute(
            f"SELECT {', '.join(columns(IngestProblem))} FROM ingest_problems ORDER BY seen_at DESC, path, line"
        ).fetchall()
        return [IngestProblem(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {table: self._count(table) for table in ("constitution_versions", "runs", "traces", "trace_steps")}


class BadJobFile(ValueError):
    """A job's run.json or progress.json that cannot be read: the job is kept out until it is fixed."""

    def __init__(self, path: Path, problem: str, line: int = 0):
        super().__init__(f"{path}" + (f", line {line}" if line else "") + f": {problem}")
        self.path, self.problem, self.line = path, problem, line


def _run_record(job: JobFolder) -> tuple[Run, dict | None]:
    """The runs row of a job and its constitution snapshot, or BadJobFile naming what cannot be read."""
    where = job.path / "run.json"
    try:
        spec = job.spec
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadJobFile(where, f"not readable as JSON: {exc}", getattr(exc, "lineno", 0)) from None
    if not isinstance(spec, dict):
        raise BadJobFile(where, f"expected a JSON object, found {type(spec).__name__}")
    for key, kind in (("kind", str), ("model", str), ("created_at", (int, float))):
        if not isinstance(spec.get(key), kind) or isinstance(spec.get(key), bool):
            raise BadJobFile(where, f"{key!r} is missing or not a {'text' if kind is str else 'number'}")
    if not isinstance(spec.get("config", {}), dict):
        raise BadJobFile(where, "'config' is not an object")
    constitution = spec.get("constitution")
    if constitution is not None and not (
        isinstance(constitution, dict)
        and all(isinstance(constitution.get(k), str) for k in ("name", "version", "content"))
    ):
        raise BadJobFile(where, "'constitution' needs a name, a version and a content")
    try:
        progress = job.progress()
    except (TypeError, ValueError) as exc:
        where = job.path / "progress.json"
        raise BadJobFile(where, str(exc).removeprefix(f"{where}: ")) from None
    run = Run(
        run_id=job.run_id,
        kind=spec["kind"],
        config=json.dumps(spec.get("config", {})),
        model=spec["model"],
        constitution_name=constitution and constitution["name"],
        constitution_version=constitution and constitution["version"],
        status=progress.status,
        done=progress.done,
        total=progress.total,
        message=progress.message,
        created_at=spec["created_at"],
        updated_at=progress.updated_at,
    )
    return run, constitution


_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


@functools.cache
def _field_types(record_type) -> dict[str, tuple[str, ...]]:
    """Each field's type names as its annotation spells them: {"p_a": ("float", "None"), ...}."""
    return {f.name: tuple(str(f.type).replace(" ", "").split("|")) for f in fields(record_type)}


def _record_row(line: bytes, table: str, record_type) -> dict:
    """One spooled line as a row of its table, or ValueError saying what is wrong with it."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JSON record: {exc}") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, found {type(row).__name__}")
    known = _field_types(record_type)
    unknown = sorted(set(row) - set(known))
    if unknown:
        raise ValueError(f"unknown field(s) for {table}: {', '.join(unknown)}")
    for name, types_ in known.items():
        value = row.get(name)
        if value is None:
            if "None" not in types_:
                raise ValueError(f"field {name!r} is missing or null")
            continue
        if "int" in types_ and isinstance(value, float) and value.is_integer():
            continue  # 3.0 for a step is a 3
        allowed = tuple(t for type_ in types_ for t in _JSON_TYPES.get(type_, ()))
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            raise ValueError(f"field {name!r}: expected {' or '.join(types_)}, found {type(value).__name__}")
        expected = CHECKED_VALUES.get((table, name))
        if expected and value not in expected:
            raise ValueError(f"field {name!r}: {value!r} is not one of {', '.join(expected)}")
    return row


def _line_number(path: Path, offset: int) -> int:
    """The 1-based line number at byte `offset` of a file (the offset is always at a line's start)."""
    count, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 20, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count


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
