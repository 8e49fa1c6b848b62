"""The DuckDB store: the only module that writes to the database. It owns the schema and its migrations.
(`agreement.py` also reads it with its own aggregate queries, for speed over millions of labels.)

Connections are short-lived (`with Store.open(ws) as store:`): DuckDB lets one process hold a
file, so nobody should hold it for long. Background jobs never open it at all; they spool records
into their folders and `ingest` copies them in, idempotently (primary keys + INSERT OR IGNORE, and
a per-file byte offset so that each line is read once).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from .backends import DEFAULT_MODEL
from .jobs import JobFolder, list_job_folders
from .records import (
    HUMAN_CHOICES,
    AILabel,
    AnnotationItem,
    EvalAnswer,
    EvalJudgment,
    HumanLabel,
    Pair,
    RoundJudgment,
    Run,
    StepVerdict,
    Trace,
    TraceStep,
    TrainedModel,
    TrainMetric,
    columns,
    now,
    to_row,
)
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
    # 7: a trace says what went wrong on the way in (a prompt cut to fit the model's context)
    """
    ALTER TABLE traces ADD COLUMN warning TEXT;
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
}


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

    # --- pairs and human labels (RLAIF) ------------------------------------------------------

    def add_pairs(self, pairs: list[Pair]) -> int:
        """Insert pairs not already stored (same pair_id); returns how many were new."""
        return self._insert_records("pairs", Pair, pairs, "INSERT OR IGNORE")

    def _insert_records(self, table: str, record_type, records: list, verb: str) -> int:
        if not records:
            return 0
        cols = columns(record_type)
        frame = pd.DataFrame([to_row(r) for r in records], columns=cols)
        before = self._one(f"SELECT count(*) FROM {table}")[0]
        with self._transaction():
            self.con.register("incoming", frame)
            try:
                self._exec(f"{verb} INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM incoming")
            finally:
                self.con.unregister("incoming")
        return self._one(f"SELECT count(*) FROM {table}")[0] - before

    def pair(self, pair_id: str) -> Pair:
        row = self._one(f"SELECT {', '.join(columns(Pair))} FROM pairs WHERE pair_id = ?", [pair_id])
        if row is None:
            raise KeyError(f"no pair {pair_id!r}")
        return Pair(*row)

    def pairs(self, *, source: str | None = None, limit: int | None = None, offset: int = 0) -> list[Pair]:
        """Pairs in their origin's order (the order a file or a run listed them)."""
        rows = self.con.execute(
            f"""SELECT {", ".join(columns(Pair))} FROM pairs WHERE ? IS NULL OR source = ?
                ORDER BY source, origin, origin_index, pair_id LIMIT ? OFFSET ?""",
            [source, source, limit, offset],
        ).fetchall()
        return [Pair(*r) for r in rows]

    def count_pairs(self, source: str | None = None) -> int:
        return self._one("SELECT count(*) FROM pairs WHERE ? IS NULL OR source = ?", [source, source])[0]

    def existing_pair_ids(self, pair_ids: list[str]) -> set[str]:
        frame = pd.DataFrame({"pair_id": pair_ids})
        self.con.register("wanted", frame)
        try:
            return {r[0] for r in self.con.execute("SELECT pair_id FROM pairs JOIN wanted USING (pair_id)").fetchall()}
        finally:
            self.con.unregister("wanted")

    def import_human_labels(self, labels: list[HumanLabel]) -> int:
        """Bulk insert or replace (an imported label overwrites that annotator's label on that pair)."""
        unknown = sorted({lb.pair_id for lb in labels} - self.existing_pair_ids([lb.pair_id for lb in labels]))
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise KeyError(f"{len(unknown)} label(s) name pairs that are not stored: {shown}")
        self._insert_records("human_labels", HumanLabel, labels, "INSERT OR REPLACE")
        return len(labels)

    def save_human_label(self, label: HumanLabel, *, attempts: int = 50) -> HumanLabel:
        """Save or edit one label (created_at of a first save is kept). Annotators save from their own
        connections at the same moment; DuckDB then fails one commit with a conflict, and we try again."""
        if not label.annotator.strip():
            raise ValueError("a label needs the annotator's name")
        if label.choice not in HUMAN_CHOICES:
            raise ValueError(f"choice {label.choice!r}: expected one of {', '.join(HUMAN_CHOICES)}")
        self.pair(label.pair_id)
        row = to_row(label)
        sql = f"""INSERT INTO human_labels ({", ".join(row)}) VALUES ({", ".join("?" * len(row))})
                  ON CONFLICT (pair_id, annotator) DO UPDATE SET choice = excluded.choice,
                  shown_swapped = excluded.shown_swapped, rationale = excluded.rationale,
                  updated_at = excluded.updated_at"""
        for attempt in range(attempts):
            try:
                with self._transaction():
                    self._exec(sql, list(row.values()))
                return label
            except (duckdb.TransactionException, duckdb.ConstraintException):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def undo_human_label(self, annotator: str) -> HumanLabel | None:
        """Delete the annotator's most recently saved label and return it (None if they have none)."""
        latest = self.human_labels(annotator=annotator, newest_first=True, limit=1)
        if not latest:
            return None
        self._exec("DELETE FROM human_labels WHERE pair_id = ? AND annotator = ?", [latest[0].pair_id, annotator])
        return latest[0]

    def human_labels(
        self,
        *,
        annotator: str | None = None,
        pair_id: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[HumanLabel]:
        order = "updated_at DESC, pair_id" if newest_first else "pair_id, annotator"
        rows = self.con.execute(
            f"""SELECT {", ".join(columns(HumanLabel))} FROM human_labels
                WHERE (? IS NULL OR annotator = ?) AND (? IS NULL OR pair_id = ?) ORDER BY {order} LIMIT ?""",
            [annotator, annotator, pair_id, pair_id, limit],
        ).fetchall()
        return [HumanLabel(*r) for r in rows]

    def _queue_sql(self, columns_: str, annotator: str, overlap: int, source: str | None) -> tuple[str, list]:
        # a skip keeps the pair from that annotator but does not count towards the labels a pair wants
        return (
            f"""SELECT {columns_} FROM pairs p LEFT JOIN (
                    SELECT pair_id, count(*) FILTER (WHERE choice <> 'skip') AS n, bool_or(annotator = ?) AS mine
                    FROM human_labels GROUP BY pair_id) h USING (pair_id)
                WHERE NOT coalesce(h.mine, false) AND coalesce(h.n, 0) < ? AND (? IS NULL OR p.source = ?)""",
            [annotator, overlap, source, source],
        )

    def annotation_queue(
        self, annotator: str, *, overlap: int = 2, limit: int = 1, source: str | None = None
    ) -> list[AnnotationItem]:
        """The next pairs for this annotator: never one they labelled (or skipped), never one that already
        has `overlap` labels. Pairs closest to their overlap come first, so that finished pairs accumulate
        (what inter-annotator agreement needs), then in their origin's order."""
        sql, params = self._queue_sql("p.pair_id, p.prompt, p.response_a, p.response_b", annotator, overlap, source)
        rows = self.con.execute(
            sql + " ORDER BY coalesce(h.n, 0) DESC, p.source, p.origin, p.origin_index, p.pair_id LIMIT ?",
            [*params, limit],
        ).fetchall()
        items = []
        for pair_id, prompt, a, b in rows:
            swapped = shown_swapped(annotator, pair_id)
            items.append(AnnotationItem(pair_id, prompt, b if swapped else a, a if swapped else b, swapped))
        return items

    def annotation_progress(self, annotator: str, *, overlap: int = 2, source: str | None = None) -> dict[str, int]:
        sql, params = self._queue_sql("count(*)", annotator, overlap, source)
        mine = self._one(
            """SELECT count(*) FROM human_labels h JOIN pairs p USING (pair_id)
               WHERE h.annotator = ? AND (? IS NULL OR p.source = ?)""",
            [annotator, source, source],
        )[0]
        return {"labelled": mine, "remaining": self._one(sql, params)[0], "pairs": self.count_pairs(source)}

    def latest_label_run(self) -> str | None:
        row = self._one("SELECT run_id FROM ai_labels ORDER BY created_at DESC LIMIT 1")
        return row[0] if row else None

    def pair_preferences(self, run_id: str, min_confidence: float = 0.0) -> pd.DataFrame:
        """Per pair: prompt, response_a, response_b and p, the probability that a is better, from a judge
        run's labels (mean over principles) or, for run_id "human", the share of a among people's a/b
        labels. Pairs with p = 0.5 or confidence |2p - 1| below `min_confidence` are left out."""
        if run_id == "human":
            labels = """SELECT pair_id, avg((choice = 'a')::INT) AS p FROM human_labels WHERE choice IN ('a', 'b')
                        GROUP BY pair_id"""
            params = [min_confidence]
        else:
            labels = """SELECT pair_id, avg(p_a) AS p FROM ai_labels WHERE run_id = ? AND p_a IS NOT NULL
                        GROUP BY pair_id"""
            params = [run_id, min_confidence]
        return self.con.execute(
            f"""SELECT p.prompt, p.response_a, p.response_b, l.p, l.pair_id
                FROM ({labels}) l JOIN pairs p USING (pair_id) WHERE l.p <> 0.5 AND abs(2 * l.p - 1) >= ?
                ORDER BY p.source, p.origin, p.origin_index, l.pair_id""",
            params,
        ).df()

    # --- training runs -----------------------------------------------------------------------

    def train_runs(self) -> pd.DataFrame:
        """Every training run with its status, config, times, final model folder (when finished) and its
        last value of each metric as `final_<name>` columns."""
        runs = self.con.execute(
            """SELECT r.*, m.path AS model_path, m.step AS final_step FROM runs r
               LEFT JOIN trained_models m USING (run_id) WHERE r.kind LIKE 'train-%' ORDER BY r.created_at DESC"""
        ).df()
        last = self.con.execute(
            """SELECT run_id, name, arg_max(value, step) AS value FROM train_metrics GROUP BY run_id, name"""
        ).df()
        if last.empty:
            return runs
        wide = last.pivot(index="run_id", columns="name", values="value").add_prefix("final_").reset_index()
        return runs.merge(wide, on="run_id", how="left")

    def train_metrics(self, run_id: str, names: list[str] | None = None) -> pd.DataFrame:
        """A run's logged metrics, long form (step, name, value), in step order: what the curves draw."""
        return self.con.execute(
            """SELECT step, name, value FROM train_metrics WHERE run_id = ? AND (? IS NULL OR list_contains(?, name))
               ORDER BY step, name""",
            [run_id, names, names],
        ).df()

    def model_choices(self) -> dict[str, str]:
        """The models a page can pick as its backend, spec → label: `default`, then every finished trained
        model whose folder still exists, newest first. Reward models are left out: they score, they do not
        generate or judge."""
        trained = self.con.execute(
            """SELECT path, kind, run_id, step FROM trained_models WHERE kind <> 'train-rm'
               ORDER BY created_at DESC, run_id"""
        ).fetchall()
        choices = {DEFAULT_MODEL: f"{DEFAULT_MODEL} (SmolLM2-135M-Instruct)"}
        for path, kind, run_id, step in trained:
            if Path(path).is_dir():
                choices[path] = f"{kind.removeprefix('train-').upper()} · {run_id} · step {step}"
        return choices

    # --- evaluation --------------------------------------------------------------------------

    def trace_answers(self, run_id: str, *, limit: int | None = None) -> pd.DataFrame:
        """Every round's answer of an SL-CAI run's traces that have at least one revision (the first
        `limit` traces in id order): what a rounds evaluation compares."""
        return self.con.execute(
            """WITH chosen AS (
                   SELECT t.trace_id, t.prompt FROM traces t WHERE t.run_id = ?
                   AND EXISTS (SELECT 1 FROM trace_steps s WHERE s.trace_id = t.trace_id AND s.round > 0)
                   ORDER BY t.trace_id LIMIT ?)
               SELECT c.trace_id, c.prompt, s.round, s.principle_id, s.response
               FROM chosen c JOIN trace_steps s USING (trace_id) ORDER BY c.trace_id, s.round""",
            [run_id, limit],
        ).df()

    def eval_runs(self) -> pd.DataFrame:
        return self.con.execute(
            "SELECT * FROM runs WHERE kind IN ('eval', 'eval-rounds') ORDER BY created_at DESC"
        ).df()

    def eval_table(self, table: str, run_id: str) -> pd.DataFrame:
        """One evaluation run's rows of eval_answers, eval_judgments or round_judgments."""
        order = {
            "eval_answers": "prompt_key, wrapper, model",
            "eval_judgments": "prompt_key, wrapper, aspect, model_a, model_b",
            "round_judgments": "trace_id, round, versus_round",
        }[table]  # the primary key after run_id
        return self.con.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY {order}", [run_id]).df()


def shown_swapped(annotator: str, pair_id: str) -> bool:
    """Whether this annotator sees the pair with its sides swapped: a fixed coin per (annotator, pair), so
    that each person's sides are random but stay the same across sessions and reloads."""
    return hashlib.sha256(f"{annotator}\0{pair_id}".encode()).digest()[0] & 1 == 1


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
