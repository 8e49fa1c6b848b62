"""Traces: SL-CAI answers round by round, paged and filtered in the database, and people's verdicts on them."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..records import CRITIQUE_VERDICTS, REVISION_VERDICTS, StepVerdict, Trace, TraceStep, check_note, columns, to_row


@dataclass(frozen=True)
class TraceFilter:
    run_id: str | None = None
    constitution_version: str | None = None
    principle_id: str | None = None
    model: str | None = None
    text: str | None = None
    verdict: str | None = None  # "better", "same", "worse", "valid", "invalid": someone gave it to a round
    trace_ids: tuple[str, ...] | None = None  # only these (what `step_flags.flagged_traces` kept)


class TraceQueries:
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
        if f.verdict:
            if f.verdict not in REVISION_VERDICTS + CRITIQUE_VERDICTS:
                raise ValueError(
                    f"unknown verdict {f.verdict!r}; choose one of {', '.join(REVISION_VERDICTS + CRITIQUE_VERDICTS)}"
                )
            column = "revision_verdict" if f.verdict in REVISION_VERDICTS else "critique_verdict"
            clauses.append(f"EXISTS (SELECT 1 FROM step_verdicts v WHERE v.trace_id = t.trace_id AND v.{column} = ?)")
            params.append(f.verdict)
        if f.trace_ids is not None:
            clauses.append("list_contains(?, t.trace_id)")
            params.append(list(f.trace_ids))
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

    def steps_to_flag(self, f: TraceFilter = TraceFilter()) -> pd.DataFrame:
        """Every step of the traces that match, in order, with what `step_flags` judges them by: the run's token
        limit (`max_new_tokens`, null when the run did not record one) and the trace's constitution version."""
        where, params = self._trace_where(f)
        return self.con.execute(
            f"""SELECT s.trace_id, s.round, s.principle_id, s.critique, s.response, s.response_tokens, s.stopped,
                       t.constitution_version,
                       TRY_CAST(json_extract_string(r.config, '$.max_new_tokens') AS INTEGER) AS max_new_tokens
                FROM traces t JOIN trace_steps s USING (trace_id) LEFT JOIN runs r ON r.run_id = t.run_id
                {where} ORDER BY s.trace_id, s.round""",
            params,
        ).df()

    def trace(self, trace_id: str) -> tuple[Trace, list[TraceStep]]:
        row = self._one("SELECT * FROM traces WHERE trace_id = ?", [trace_id])
        if row is None:
            raise KeyError(f"no trace {trace_id!r}")
        steps = self.con.execute("SELECT * FROM trace_steps WHERE trace_id = ? ORDER BY round", [trace_id]).fetchall()
        return Trace(*row), [TraceStep(*s) for s in steps]

    def distinct(self, column: str, containing: str | None = None, limit: int = 50, offset: int = 0) -> list[str]:
        """A page of the traces' distinct values of COLUMN (those holding CONTAINING, case aside), in order: a
        filter's choices (200 runs and more are chosen a page at a time, `ui.paging.long_choice`)."""
        return self._reused(
            ("distinct", column, containing, limit, offset),
            lambda: [
                r[0]
                for r in self.con.execute(
                    f"{_distinct_sql(column)} ORDER BY 1 LIMIT ? OFFSET ?", [containing, containing, limit, offset]
                ).fetchall()
            ],
        )

    def count_distinct(self, column: str, containing: str | None = None) -> int:
        """How many values `distinct` pages through (a pass over 100k traces: reused until the data changes)."""
        return self._reused(
            ("count_distinct", column, containing),
            lambda: self._one(f"SELECT count(*) FROM ({_distinct_sql(column)})", [containing, containing])[0],
        )

    def final_steps(
        self,
        *,
        constitution_version: str | None = None,
        max_round: int | None = None,
        run_id: str | None = None,
        revised_only: bool = False,
    ) -> pd.DataFrame:
        """Per trace: the prompt, the initial answer and the last revision (up to `max_round`); with `revised_only`,
        only the traces whose revision differs from the initial answer (beyond white space)."""
        sql, params = _final_steps_sql(constitution_version, max_round, run_id, revised_only)
        return self.con.execute(f"SELECT * FROM ({sql}) ORDER BY trace_id", params).df()

    def count_final_steps(
        self,
        *,
        constitution_version: str | None = None,
        max_round: int | None = None,
        run_id: str | None = None,
        revised_only: bool = False,
    ) -> int:
        """How many rows `final_steps` returns, counted in the database (a page shows it at every redraw: reused
        until the data changes)."""
        return self._reused(
            ("count_final_steps", constitution_version, max_round, run_id, revised_only),
            lambda: self._count_final_steps(constitution_version, max_round, run_id, revised_only),
        )

    def _count_final_steps(
        self, constitution_version: str | None, max_round: int | None, run_id: str | None, revised_only: bool
    ) -> int:
        if revised_only:  # the texts of each trace's last revision are compared: only the query itself says
            sql, params = _final_steps_sql(constitution_version, max_round, run_id, revised_only)
            return self._one(f"SELECT count(*) FROM ({sql})", params)[0]
        # a trace has a row when it has an answer and a revision (up to max_round): a third of the window's cost
        return self._one(
            """SELECT count(*) FROM traces t JOIN (
                   SELECT trace_id FROM trace_steps GROUP BY trace_id
                   HAVING bool_or(round = 0) AND bool_or(round > 0 AND (? IS NULL OR round <= ?))) USING (trace_id)
               WHERE (? IS NULL OR t.constitution_version = ?) AND (? IS NULL OR t.run_id = ?)""",
            [
                max_round,
                max_round,
                constitution_version or None,
                constitution_version or None,
                run_id or None,
                run_id or None,
            ],
        )[0]

    # --- people's verdicts on rounds ----------------------------------------------------------

    def save_verdict(self, verdict: StepVerdict) -> None:
        if not verdict.annotator.strip():
            raise ValueError("a verdict needs the annotator's name")
        check_note("note", verdict.note, f"verdict on trace {verdict.trace_id!r}, round {verdict.round}")
        if (
            self._one("SELECT 1 FROM trace_steps WHERE trace_id = ? AND round = ?", [verdict.trace_id, verdict.round])
            is None
        ):
            raise KeyError(f"trace {verdict.trace_id!r} has no round {verdict.round}")
        row = to_row(verdict)
        with self._write():
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


_WHITE_SPACE = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"


def _final_steps_sql(
    constitution_version: str | None, max_round: int | None, run_id: str | None, revised_only: bool
) -> tuple[str, list]:
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
    # a revision identical to the first answer teaches a preference model nothing
    revised = f"WHERE trim(revision, {_WHITE_SPACE}) <> trim(initial, {_WHITE_SPACE})" if revised_only else ""
    sql = f"""SELECT * FROM (
                  SELECT t.trace_id, t.prompt, t.constitution_version, t.model, s.round, s.principle_id,
                         s.response AS revision, i.response AS initial
                  FROM traces t JOIN trace_steps s USING (trace_id) JOIN trace_steps i
                    ON i.trace_id = t.trace_id AND i.round = 0
                  WHERE {" AND ".join(clauses)}
                  QUALIFY row_number() OVER (PARTITION BY t.trace_id ORDER BY s.round DESC) = 1) {revised}"""
    return sql, params


def _distinct_sql(column: str) -> str:
    """The distinct values of a traces' filter column that hold a text (a parameter given twice; None: all)."""
    table = "trace_steps" if column == "principle_id" else "traces"
    assert column in ("run_id", "constitution_version", "model", "principle_id"), column
    return (
        f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL "
        f"AND (?::TEXT IS NULL OR contains(lower({column}), lower(?::TEXT)))"
    )
