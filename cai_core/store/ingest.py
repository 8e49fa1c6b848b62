"""Ingest: copying what jobs spooled into their folders into the tables.

Ingest is idempotent (primary keys + INSERT OR IGNORE, and a per-file byte offset so that each line is
read once). A line that is not a record of its table (bad JSON, a wrong field, a wrong type) is
quarantined: kept out, recorded in `ingest_problems` with its file and line, and skipped, so one bad
line never stops the other jobs. A job whose run.json cannot be read is quarantined whole. Only a torn
last line (no newline yet) waits for its writer.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import fields
from pathlib import Path

import duckdb
import pandas as pd

from ..job_folder import job_files_stamp
from ..jobs import JobFolder, list_job_folders
from ..records import (
    PAIR_SOURCES,
    AILabel,
    CalibrationPrior,
    EvalAnswer,
    EvalJudgment,
    IngestProblem,
    InspectScore,
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
    "inspect_scores": InspectScore,
    "judge_calibrations": StoredCalibration,
    "calibration_priors": CalibrationPrior,
}
SPOOLED_FILES = {table: JobFolder(Path()).records_path(table).name for table in SPOOLED_TABLES}  # by file name
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


class IngestQueries:
    def ingest(self, runs_dir: Path) -> int:
        """Copy every job's new records in; returns how many rows were new. Safe to call anytime, from any
        number of sessions at once; what cannot be read is quarantined (see `ingest_problems`). With nothing
        new it costs four queries and a listing of each job's folder, reads no file, and writes nothing: a finished
        job's run.json and progress.json are read again only when their stat differs from the one kept when they
        were last read (`job_files_stamp`)."""
        runs = {row[0]: row for row in self.con.execute(f"SELECT {', '.join(columns(Run))} FROM runs").fetchall()}
        offsets = dict(self.con.execute("SELECT path, bytes FROM ingest_offsets").fetchall())
        stamps = dict(  # a running job's files are read at every ingest: its process may have died since
            self.con.execute(
                "SELECT s.folder, s.stamp FROM job_file_stamps s JOIN runs r USING (run_id) "
                "WHERE r.status NOT IN ('pending', 'running')"
            ).fetchall()
        )
        job_problems = dict(  # what is known to be wrong with run.json and progress.json files
            ((path, line), problem)
            for path, line, problem in self.con.execute(
                "SELECT path, line, problem FROM ingest_problems WHERE path LIKE '%.json'"
            ).fetchall()
        )
        added, read = 0, []
        folders = Path(runs_dir).resolve()
        for job in list_job_folders(runs_dir, unreadable=True):
            # one listing of the folder, not a look per table it might spool; stat'ed before the job's files are
            # read, so that a change made while they are read is seen at the next ingest
            sizes, stamp = _listing(job.path)
            folder = str(folders / job.path.name)
            if stamp is None or stamps.get(folder) != stamp:
                try:
                    run, constitution = _run_record(job)
                except BadJobFile as exc:
                    if job_problems.get((str(exc.path.resolve()), exc.line)) != exc.problem:  # not written twice
                        with self._write():
                            self._quarantine(exc.path, exc.line, exc.problem)
                    continue
                if runs.get(run.run_id) != tuple(run.__dict__.values()):
                    self._store_run(job, run, constitution)
                if stamp is not None:
                    read.append((folder, run.run_id, stamp))
            # by name first: a path made and resolved for each table a job might spool into was most of an ingest
            # with nothing new (200 jobs x 12 tables)
            grown = [
                (table, job.records_path(table))
                for table, name in SPOOLED_FILES.items()
                if name in sizes and sizes[name] > offsets.get(f"{folder}/{name}", 0)
            ]
            added += sum(self._ingest_file(path, table) for table, path in grown)
        if read:
            with self._write(changes_data=False):  # when a file was read, not what it said
                self._insert_frame(
                    "INSERT OR REPLACE", "job_file_stamps", pd.DataFrame(read, columns=["folder", "run_id", "stamp"])
                )
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


class BadJobFile(ValueError):
    """A job's run.json or progress.json that cannot be read: the job is kept out until it is fixed."""

    def __init__(self, path: Path, problem: str, line: int = 0):
        super().__init__(f"{path}" + (f", line {line}" if line else "") + f": {problem}")
        self.path, self.problem, self.line = path, problem, line


def _listing(folder: Path) -> tuple[dict[str, int], str | None]:
    """From one listing of a job's FOLDER: the size of each spooled (.jsonl) file by name, and the stamp of its
    run.json and progress.json (`job_files_stamp`: None while either is missing or changed too recently to trust)."""
    sizes, stats = {}, {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".jsonl"):
                    sizes[entry.name] = entry.stat().st_size
                elif entry.name in ("run.json", "progress.json"):
                    stats[entry.name] = entry.stat()
    except FileNotFoundError:  # removed since it was listed
        return {}, None
    return sizes, job_files_stamp(stats)


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
