"""The DuckDB store: the only module that writes SQL. It owns the schema and its migrations.

Connections are short-lived (`with Store.open(ws) as store:`): DuckDB lets one process hold a
file, so nobody should hold it for long. Background jobs never open it at all; they spool records
into their folders and `ingest` copies them in, idempotently (primary keys + INSERT OR IGNORE, and
a per-file byte offset so that each line is read once).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from .jobs import JobFolder, list_job_folders
from .records import Run, StepVerdict, Trace, TraceStep, columns, now, to_row
from .workspace import Workspace


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
]

# Tables a job may spool into, with the record type that fixes their columns.
SPOOLED_TABLES = {"traces": Trace, "trace_steps": TraceStep}


@dataclass(frozen=True)
class TraceFilter:
    run_id: str | None = None
    constitution_version: str | None = None
    principle_id: str | None = None
    model: str | None = None
    text: str | None = None


class Store:
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path):
        self.con = con
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, workspace: Workspace | str | Path, *, wait_seconds: float = 10.0) -> Iterator[Store]:
        path = workspace.db_path if isinstance(workspace, Workspace) else Path(workspace)
        con = _connect(path, wait_seconds)
        store = cls(con, path)
        try:
            store.migrate()
            yield store
        except (duckdb.IOException, duckdb.TransactionException) as exc:  # disk full, a failed commit, ...
            raise StoreError(f"database {path}: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        self._exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE)")
        applied = self._one("SELECT coalesce(max(version), 0) FROM schema_migrations")[0]
        for version, sql in enumerate(MIGRATIONS[applied:], start=applied + 1):
            with self._transaction():
                self._exec(sql)
                self._exec("INSERT INTO schema_migrations VALUES (?, ?)", [version, now()])

    @property
    def schema_version(self) -> int:
        return self._one("SELECT max(version) FROM schema_migrations")[0]

    def _exec(self, sql: str, params: list | None = None) -> None:
        self.con.execute(sql, params or []).fetchall()

    def _one(self, sql: str, params: list | None = None) -> tuple | None:
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    @contextmanager
    def _transaction(self):
        self._exec("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self._exec("ROLLBACK")
            raise
        self._exec("COMMIT")  # a failed commit has already ended the transaction: nothing to roll back

    # --- constitutions -----------------------------------------------------------------------

    def record_constitution(self, constitution, path: str | Path | None = None, note: str = "") -> str:
        """Remember a version's text; with a path, also log it as a save of that file."""
        version = constitution.version
        with self._transaction():
            self._exec(
                "INSERT OR IGNORE INTO constitution_versions VALUES (?, ?, ?, ?)",
                [version, constitution.name, constitution.to_yaml(), now()],
            )
            if path is not None:
                next_id = self._one("SELECT coalesce(max(save_id), 0) + 1 FROM constitution_saves")[0]
                self._exec(
                    "INSERT INTO constitution_saves VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        next_id,
                        str(Path(path).resolve()),
                        constitution.name,
                        version,
                        constitution.to_yaml(),
                        note,
                        now(),
                    ],
                )
        return version

    def constitution_history(self, path: str | Path) -> pd.DataFrame:
        return self.con.execute(
            "SELECT save_id, version, note, saved_at FROM constitution_saves WHERE path = ? ORDER BY save_id DESC",
            [str(Path(path).resolve())],
        ).df()

    def constitution_text(self, version: str) -> str:
        row = self._one("SELECT content FROM constitution_versions WHERE version = ?", [version])
        if row is None:
            raise KeyError(f"no constitution version {version!r} in {self.path}")
        return row[0]

    # --- ingest ------------------------------------------------------------------------------

    def ingest(self, runs_dir: Path) -> int:
        """Copy every job's new records in; returns how many rows were new. Safe to call anytime."""
        added = 0
        for job in list_job_folders(runs_dir):
            added += self.ingest_job(job)
        return added

    def ingest_job(self, job: JobFolder) -> int:
        spec, progress = job.spec, job.progress()
        added = 0
        with self._transaction():
            constitution = spec.get("constitution")
            if constitution:
                self._exec(
                    "INSERT OR IGNORE INTO constitution_versions VALUES (?, ?, ?, ?)",
                    [constitution["version"], constitution["name"], constitution["content"], spec["created_at"]],
                )
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
            self._exec(
                f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(columns(Run)))})",
                list(run.__dict__.values()),
            )
            for table, record_type in SPOOLED_TABLES.items():
                added += self._ingest_file(job.records_path(table), table, columns(record_type))
        return added

    def _ingest_file(self, path: Path, table: str, cols: list[str]) -> int:
        if not path.exists():
            return 0
        key = str(path.resolve())
        row = self._one("SELECT bytes FROM ingest_offsets WHERE path = ?", [key])
        offset = row[0] if row else 0
        if path.stat().st_size <= offset:
            return 0
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        chunk = chunk[: chunk.rfind(b"\n") + 1]  # a torn last line waits for its writer
        if not chunk:
            return 0
        frame = pd.DataFrame([json.loads(line) for line in chunk.splitlines() if line.strip()], columns=cols)
        before = self._one(f"SELECT count(*) FROM {table}")[0]
        self.con.register("incoming", frame)
        try:
            self._exec(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM incoming")
        finally:
            self.con.unregister("incoming")
        self._exec("INSERT OR REPLACE INTO ingest_offsets VALUES (?, ?)", [key, offset + len(chunk)])
        return self._one(f"SELECT count(*) FROM {table}")[0] - before

    # --- reading -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {
            table: self._one(f"SELECT count(*) FROM {table}")[0]
            for table in ("constitution_versions", "runs", "traces", "trace_steps")
        }

    def runs(self, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY created_at DESC"
        return self.con.execute(sql, [kind] if kind else []).df()

    def _trace_where(self, f: TraceFilter) -> tuple[str, list]:
        clauses, params = [], []
        for column in ("run_id", "constitution_version", "model"):
            if getattr(f, column):
                clauses.append(f"t.{column} = ?")
                params.append(getattr(f, column))
        if f.principle_id:
            clauses.append("EXISTS (SELECT 1 FROM trace_steps s WHERE s.trace_id = t.trace_id AND s.principle_id = ?)")
            params.append(f.principle_id)
        if f.text:
            clauses.append(
                "(t.prompt ILIKE ? OR EXISTS (SELECT 1 FROM trace_steps s WHERE s.trace_id = t.trace_id "
                "AND (s.response ILIKE ? OR s.critique ILIKE ?)))"
            )
            params += [f"%{f.text}%"] * 3
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count_traces(self, f: TraceFilter = TraceFilter()) -> int:
        where, params = self._trace_where(f)
        return self._one(f"SELECT count(*) FROM traces t{where}", params)[0]

    def trace_page(self, f: TraceFilter = TraceFilter(), *, limit: int = 50, offset: int = 0) -> pd.DataFrame:
        """One page of traces, newest first, with their round count: never the whole table."""
        where, params = self._trace_where(f)
        return self.con.execute(
            f"""SELECT t.*, (SELECT max(round) FROM trace_steps s WHERE s.trace_id = t.trace_id) AS rounds
                FROM traces t{where} ORDER BY t.created_at DESC, t.trace_id LIMIT ? OFFSET ?""",
            [*params, limit, offset],
        ).df()

    def trace(self, trace_id: str) -> tuple[Trace, list[TraceStep]]:
        row = self._one("SELECT * FROM traces WHERE trace_id = ?", [trace_id])
        if row is None:
            raise KeyError(f"no trace {trace_id!r}")
        steps = self.con.execute("SELECT * FROM trace_steps WHERE trace_id = ? ORDER BY round", [trace_id]).fetchall()
        return Trace(*row), [TraceStep(*s) for s in steps]

    def distinct(self, column: str) -> list[str]:
        table = "trace_steps" if column == "principle_id" else "traces"
        assert column in ("run_id", "constitution_version", "model", "principle_id"), column
        return [
            r[0]
            for r in self.con.execute(
                f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]

    def final_steps(
        self, *, constitution_version: str | None = None, max_round: int | None = None, run_id: str | None = None
    ) -> pd.DataFrame:
        """Per trace: the prompt, the initial answer and the last revision (up to `max_round`)."""
        clauses, params = ["s.round > 0"], []
        if max_round is not None:
            clauses.append("s.round <= ?")
            params.append(max_round)
        if constitution_version:
            clauses.append("t.constitution_version = ?")
            params.append(constitution_version)
        if run_id:
            clauses.append("t.run_id = ?")
            params.append(run_id)
        return self.con.execute(
            f"""SELECT t.trace_id, t.prompt, t.constitution_version, t.model, s.round, s.principle_id,
                       s.response AS revision, i.response AS initial
                FROM traces t JOIN trace_steps s USING (trace_id) JOIN trace_steps i
                  ON i.trace_id = t.trace_id AND i.round = 0
                WHERE {" AND ".join(clauses)}
                QUALIFY row_number() OVER (PARTITION BY t.trace_id ORDER BY s.round DESC) = 1
                ORDER BY t.trace_id""",
            params,
        ).df()

    # --- verdicts -----------------------------------------------------------------------------

    def save_verdict(self, verdict: StepVerdict) -> None:
        if not verdict.annotator.strip():
            raise ValueError("a verdict needs the annotator's name")
        if (
            self._one("SELECT 1 FROM trace_steps WHERE trace_id = ? AND round = ?", [verdict.trace_id, verdict.round])
            is None
        ):
            raise KeyError(f"trace {verdict.trace_id!r} has no round {verdict.round}")
        row = to_row(verdict)
        self._exec(
            f"INSERT OR REPLACE INTO step_verdicts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )

    def verdicts(self, trace_id: str | None = None) -> list[StepVerdict]:
        sql = f"SELECT {', '.join(columns(StepVerdict))} FROM step_verdicts"
        rows = (
            self.con.execute(sql + " WHERE trace_id = ? ORDER BY round, annotator", [trace_id])
            if trace_id
            else self.con.execute(sql + " ORDER BY trace_id, round, annotator")
        ).fetchall()
        return [StepVerdict(*r) for r in rows]

    def verdict_counts(self) -> pd.DataFrame:
        """How many verdicts of each kind, over every trace: what the page shows as totals."""
        return self.con.execute(
            """SELECT 'revision' AS aspect, revision_verdict AS verdict, count(*) AS n FROM step_verdicts
               WHERE revision_verdict IS NOT NULL GROUP BY ALL
               UNION ALL
               SELECT 'critique', critique_verdict, count(*) FROM step_verdicts
               WHERE critique_verdict IS NOT NULL GROUP BY ALL ORDER BY 1, 2"""
        ).df()


def _connect(path: Path, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    if path.exists() and path.is_dir():
        raise StoreError(f"database path {path} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for database {path}: {exc.strerror}") from None
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
