"""Pairs, the AI judges' labels over them, and people's labels: saving, undoing, and the annotation queue.

Overlap stays exact with many annotators at once: the pairs on an annotator's screen and in their page's
look-ahead are claimed for them (`annotation_claims`), and a claim counts towards the pair's wanted labels as a
label does, so nobody else is handed it meanwhile. Handing out a pair and saving a label each happen
under the write lock, so the counts they read are exact. A claim expires after CLAIM_SECONDS (a closed
tab gives its pair back); a label saved on a pair filled meanwhile is still kept, never dropped.

The queue serves pairs in their origin's order, or disagreement-first: by the queue keys of a label run's frozen
contest scores (`queue_scores`, written by `judge_audit.score_queue`), recording each pair it hands out
(`queue_served`) so that the agreement measured on those labels can be reweighted by how likely each pair was
to be served. The order changes nothing else: the same claims, under the same lock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from ..records import HUMAN_CHOICES, AnnotationItem, HumanLabel, Pair, check_note, columns, now, to_row
from .agreement import ai_labels_table

CLAIM_SECONDS = 30 * 60


@dataclass(frozen=True)
class PairQueue:
    """Which pairs an annotator's queue holds and in what order: those that want `overlap` labels, of one source
    (None: every source), in their origin's order or, with `contested_run`, disagreement-first by that label
    run's queue keys."""

    overlap: int = 2
    source: str | None = None
    contested_run: str | None = None


class LabelQueries:
    def add_pairs(self, pairs: list[Pair]) -> int:
        """Insert pairs not already stored (same pair_id); returns how many were new."""
        return self._insert_records("pairs", Pair, pairs, "INSERT OR IGNORE")

    def _insert_records(self, table: str, record_type, records: list, verb: str) -> int:
        if not records:
            return 0
        frame = pd.DataFrame([to_row(r) for r in records], columns=columns(record_type))
        with self._write():
            before = self._count(table)
            self._insert_frame(verb, table, frame)
            return self._count(table) - before

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

    def import_human_labels(self, labels: list[HumanLabel], importer: str = "operator") -> int:
        """Bulk insert labels IMPORTER imports (by default the command line's operator); returns how many were
        stored. A label corrects IMPORTER's earlier import of that (pair, annotator); it never replaces a label
        the annotator saved in the app, nor another importer's: those are kept, and the imported one dropped."""
        for label in labels:
            check_note("rationale", label.rationale, f"label by {label.annotator!r} on pair {label.pair_id!r}")
        unknown = sorted({lb.pair_id for lb in labels} - self.existing_pair_ids([lb.pair_id for lb in labels]))
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise KeyError(f"{len(unknown)} label(s) name pairs that are not stored: {shown}")
        if not labels:
            return 0
        rows = [to_row(dataclasses.replace(label, imported_by=importer)) for label in labels]
        frame = pd.DataFrame(rows, columns=columns(HumanLabel))
        cols = ", ".join(frame.columns)
        self.con.register("incoming", frame)
        try:
            with self._write():
                kept = self._one(
                    """SELECT count(*) FROM incoming i JOIN human_labels h USING (pair_id, annotator)
                       WHERE coalesce(h.imported_by, '') = '' OR h.imported_by <> i.imported_by"""
                )[0]
                self._exec(
                    f"""INSERT INTO human_labels ({cols}) SELECT {cols} FROM incoming
                        ON CONFLICT (pair_id, annotator) DO UPDATE SET choice = excluded.choice,
                        shown_swapped = excluded.shown_swapped, rationale = excluded.rationale,
                        updated_at = excluded.updated_at
                        WHERE coalesce(human_labels.imported_by, '') <> ''
                          AND human_labels.imported_by = excluded.imported_by"""
                )
        finally:
            self.con.unregister("incoming")
        return len(labels) - kept

    def save_human_label(self, label: HumanLabel) -> HumanLabel:
        """Save or edit one label (created_at of a first save is kept), and give back the annotator's claim
        on the pair."""
        if not label.annotator.strip():
            raise ValueError("a label needs the annotator's name")
        if label.choice not in HUMAN_CHOICES:
            raise ValueError(f"choice {label.choice!r}: expected one of {', '.join(HUMAN_CHOICES)}")
        check_note("rationale", label.rationale, f"label by {label.annotator!r} on pair {label.pair_id!r}")
        self.pair(label.pair_id)
        row = to_row(label)
        with self._write():
            self._exec(
                f"""INSERT INTO human_labels ({", ".join(row)}) VALUES ({", ".join("?" * len(row))})
                    ON CONFLICT (pair_id, annotator) DO UPDATE SET choice = excluded.choice,
                    shown_swapped = excluded.shown_swapped, rationale = excluded.rationale,
                    updated_at = excluded.updated_at, imported_by = excluded.imported_by""",
                list(row.values()),
            )
            self._exec(
                "DELETE FROM annotation_claims WHERE annotator = ? AND pair_id = ?", [label.annotator, label.pair_id]
            )
        return label

    def undo_human_label(self, annotator: str) -> HumanLabel | None:
        """Delete the annotator's most recently saved label and return it (None if they have none). The pair
        is claimed for them again: it is the next one they are shown."""
        with self._write():
            latest = self.human_labels(annotator=annotator, newest_first=True, limit=1)
            if not latest:
                return None
            pair_id = latest[0].pair_id
            self._exec("DELETE FROM human_labels WHERE pair_id = ? AND annotator = ?", [pair_id, annotator])
            # claimed before the pairs they already hold, so that it is the first of them shown
            self._exec(
                """INSERT OR REPLACE INTO annotation_claims
                   SELECT ?, ?, least(?, coalesce(min(claimed_at), ?)) - 1e-3 FROM annotation_claims
                   WHERE annotator = ?""",
                [annotator, pair_id, now(), now(), annotator],
            )
        return latest[0]

    def human_labels(
        self,
        *,
        annotator: str | None = None,
        pair_id: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[HumanLabel]:
        order = "updated_at DESC, pair_id" if newest_first else "pair_id, annotator"
        rows = self.con.execute(
            f"""SELECT {", ".join(columns(HumanLabel))} FROM human_labels
                WHERE (? IS NULL OR annotator = ?) AND (? IS NULL OR pair_id = ?) ORDER BY {order} LIMIT ? OFFSET ?""",
            [annotator, annotator, pair_id, pair_id, limit, offset],
        ).fetchall()
        return [HumanLabel(*r) for r in rows]

    # --- the annotation queue -------------------------------------------------------------------

    def _queue_sql(self, columns_: str, annotator: str, queue: PairQueue) -> tuple[str, list]:
        # A skip keeps the pair from that annotator but does not count towards the labels a pair wants; another
        # annotator's live claim does count. `taken` is both.
        return (
            f"""SELECT {columns_} FROM pairs p LEFT JOIN (
                    SELECT pair_id, count(*) FILTER (WHERE choice <> 'skip') AS n, bool_or(annotator = ?) AS mine
                    FROM human_labels GROUP BY pair_id) h USING (pair_id)
                LEFT JOIN (
                    SELECT pair_id, count(*) AS held FROM annotation_claims WHERE annotator <> ? AND claimed_at > ?
                    GROUP BY pair_id) c USING (pair_id)
                LEFT JOIN (SELECT pair_id, queue_key FROM queue_scores WHERE run_id = ?) q USING (pair_id)
                WHERE NOT coalesce(h.mine, false) AND coalesce(h.n, 0) + coalesce(c.held, 0) < ?
                  AND (? IS NULL OR p.source = ?)""",
            [
                annotator,
                annotator,
                now() - CLAIM_SECONDS,
                queue.contested_run,
                queue.overlap,
                queue.source,
                queue.source,
            ],
        )

    def annotation_queue(
        self, annotator: str, queue: PairQueue = PairQueue(), *, limit: int = 1
    ) -> list[AnnotationItem]:
        """The next pairs for this annotator: never one they labelled (or skipped), never one that already
        has `queue.overlap` labels or claims. Pairs closest to their overlap come first, so that finished pairs
        accumulate (what inter-annotator agreement needs), then in their origin's order. With `contested_run`,
        disagreement-first instead: by that label run's queue keys (the most contested pairs first, see
        `judge_queue.queue_order`), pairs it did not score last. Claims nothing: `next_annotation` hands a
        pair out."""
        sql, params = self._queue_sql(f"{', '.join('p.' + c for c in columns(Pair))}", annotator, queue)
        fill_first = "" if queue.contested_run else "coalesce(h.n, 0) + coalesce(c.held, 0) DESC,"
        rows = self.con.execute(
            sql
            + f""" ORDER BY q.queue_key ASC NULLS LAST, {fill_first} p.source, p.origin, p.origin_index, p.pair_id
                   LIMIT ?""",
            [*params, limit],
        ).fetchall()
        return [AnnotationItem.for_annotator(Pair(*r), annotator) for r in rows]

    def claim_annotations(self, annotator: str, count: int = 1, queue: PairQueue = PairQueue()) -> list[AnnotationItem]:
        """Up to `count` pairs this annotator should label next, claimed for them, in the order to show them:
        the ones they already hold (until they label them or the claims expire), in the order they were handed
        out, then the head of their queue (disagreement-first by `contested_run`'s scores, when given: each
        pair handed out is then recorded as served by that queue). Every claim of theirs is renewed. Empty
        when their queue is empty."""
        if not annotator.strip():
            raise ValueError("an annotator needs a name")
        with self._write():
            started = now()
            held = [
                row[0]
                for row in self.con.execute(
                    """SELECT c.pair_id FROM annotation_claims c WHERE c.annotator = ? AND c.claimed_at > ?
                       AND NOT EXISTS (SELECT 1 FROM human_labels h WHERE h.pair_id = c.pair_id AND h.annotator = ?)
                       ORDER BY c.claimed_at, c.pair_id""",
                    [annotator, started - CLAIM_SECONDS, annotator],
                ).fetchall()
            ]
            items = [AnnotationItem.for_annotator(self.pair(pair_id), annotator) for pair_id in held]
            if len(items) < count:
                head = self.annotation_queue(annotator, queue, limit=count)
                fresh = [item for item in head if item.pair_id not in held][: count - len(items)]
                if queue.contested_run:
                    for item in fresh:
                        self._exec(
                            "INSERT OR IGNORE INTO queue_served VALUES (?, ?, ?, ?)",
                            [queue.contested_run, item.pair_id, annotator, started],
                        )
                items += fresh
            # Renewing rewrites them all, a microsecond apart: the claim times keep the order they were handed out.
            self._exec("DELETE FROM annotation_claims WHERE annotator = ?", [annotator])
            claims = pd.DataFrame(
                {
                    "annotator": annotator,
                    "pair_id": [item.pair_id for item in items],
                    "claimed_at": [started + n * 1e-6 for n in range(len(items))],
                }
            )
            self._insert_frame("INSERT", "annotation_claims", claims)
            return items[:count]

    def release_claims(self, annotator: str, *, keep: int = 0) -> None:
        """Give back the pairs this annotator holds, all but the first KEEP handed out (the one on their
        screen): when the order of their queue changes, a look-ahead drawn in the old order goes back."""
        with self._write():
            self._exec(
                """DELETE FROM annotation_claims WHERE annotator = ? AND pair_id NOT IN (
                       SELECT pair_id FROM annotation_claims WHERE annotator = ?
                       ORDER BY claimed_at, pair_id LIMIT ?)""",
                [annotator, annotator, keep],
            )

    def leave_queues(self, annotator: str) -> None:
        """Give back everything this annotator holds, in the pair queue and in the graders' audit queues (they left
        the page where they label): the others are handed it now, not after CLAIM_SECONDS."""
        with self._write():
            self._exec("DELETE FROM annotation_claims WHERE annotator = ?", [annotator])
            self.release_grader_claims(annotator)  # the audit queues' own rule (store/audits.py)

    def next_annotation(self, annotator: str, queue: PairQueue = PairQueue()) -> AnnotationItem | None:
        """The one pair this annotator should label now, claimed for them (see `claim_annotations`); None when
        their queue is empty."""
        items = self.claim_annotations(annotator, queue=queue)
        return items[0] if items else None

    def queue_score_inputs(self, run_id: str) -> pd.DataFrame:
        """Per pair a label run judged: its per-order probabilities (mean over principles), the spread of its
        principles' P(a better) (0 unless ensemble), and people's a and b labels on it so far."""
        return self.con.execute(
            """SELECT l.pair_id, avg(l.p_order1) AS p1, avg(l.p_order2) AS p2, max(l.p_a) - min(l.p_a) AS spread,
                      coalesce(any_value(h.na), 0) AS na, coalesce(any_value(h.nb), 0) AS nb
               FROM ai_labels l LEFT JOIN (
                   SELECT pair_id, count(*) FILTER (WHERE choice = 'a') AS na,
                          count(*) FILTER (WHERE choice = 'b') AS nb
                   FROM human_labels GROUP BY pair_id) h USING (pair_id)
               WHERE l.run_id = ? GROUP BY l.pair_id ORDER BY l.pair_id""",
            [run_id],
        ).df()

    def save_queue_scores(self, run_id: str, scores: pd.DataFrame) -> int:
        """Freeze contest scores and queue keys (pair_id, score, queue_key) for a label run's queue; a pair
        scored before keeps its score (the reweighting needs the design the pair was drawn under). Returns how
        many pairs were new."""
        frame = scores.assign(run_id=run_id, scored_at=now())[["run_id", "pair_id", "score", "queue_key", "scored_at"]]
        with self._write():
            before = self._count("queue_scores")
            self._insert_frame("INSERT OR IGNORE", "queue_scores", frame)
            return self._count("queue_scores") - before

    def queue_scores(self, run_id: str) -> pd.DataFrame:
        """pair_id, score and queue_key of every pair a label run's queue scored, in queue order."""
        return self.con.execute(
            "SELECT pair_id, score, queue_key FROM queue_scores WHERE run_id = ? ORDER BY queue_key, pair_id", [run_id]
        ).df()

    def queue_served_labels(self, run_id: str) -> pd.DataFrame:
        """The a/b labels people saved on pairs the run's disagreement-first queue served them, in the order the
        pairs were served: pair_id, annotator, choice, served_at."""
        return self.con.execute(
            """SELECT s.pair_id, s.annotator, h.choice, s.served_at FROM queue_served s
               JOIN human_labels h ON h.pair_id = s.pair_id AND h.annotator = s.annotator
               WHERE s.run_id = ? AND h.choice IN ('a', 'b') ORDER BY s.served_at, s.pair_id, s.annotator""",
            [run_id],
        ).df()

    def annotation_progress(self, annotator: str, queue: PairQueue = PairQueue()) -> dict[str, int]:
        # the order a queue takes changes which pairs come first, not how many are left
        sql, params = self._queue_sql("count(*)", annotator, queue)
        mine = self._one(
            """SELECT count(*) FROM human_labels h JOIN pairs p USING (pair_id)
               WHERE h.annotator = ? AND (? IS NULL OR p.source = ?)""",
            [annotator, queue.source, queue.source],
        )[0]
        return {"labelled": mine, "remaining": self._one(sql, params)[0], "pairs": self.count_pairs(queue.source)}

    # --- AI labels -----------------------------------------------------------------------------

    def latest_label_run(self) -> str | None:
        """The run of the newest AI label (a pass over every label: reused until the data changes)."""
        row = self._reused(
            ("latest_label_run",), lambda: self._one("SELECT run_id FROM ai_labels ORDER BY created_at DESC LIMIT 1")
        )
        return row[0] if row else None

    def pair_preferences(
        self,
        run_id: str,
        min_confidence: float = 0.0,
        calibration_id: str | None = None,
        principle_weights: dict[str, float] | None = None,
        raw: bool = False,
    ) -> pd.DataFrame:
        """Per pair: prompt, response_a, response_b and p, the probability that a is better, from a judge
        run's labels (mean over principles) or, for run_id "human", the share of a among people's a/b labels; and
        `calibration`, the calibration p was read through (None: raw). A judge's labels are read through
        `calibration_id` when given (a stored calibration applied now); otherwise as calibrated when the run
        labelled through a calibration, unless `raw`. Pairs with p = 0.5 or confidence |2p - 1| below
        `min_confidence` are left out. `principle_weights` (the label gate's): p is the weighted mean over the
        principles it names, and a pair whose principles all weigh 0 is left out."""
        labels, params = self._pair_preference_sql(run_id, min_confidence, calibration_id, principle_weights, raw)
        return self.con.execute(
            f"""SELECT p.prompt, p.response_a, p.response_b, l.p, l.pair_id, l.calibration
                FROM ({labels}) l JOIN pairs p USING (pair_id)
                ORDER BY p.source, p.origin, p.origin_index, l.pair_id""",
            params,
        ).df()

    def count_pair_preferences(
        self,
        run_id: str,
        min_confidence: float = 0.0,
        calibration_id: str | None = None,
        principle_weights: dict[str, float] | None = None,
        raw: bool = False,
    ) -> int:
        """How many rows `pair_preferences` returns, counted in the database (the Data page shows it at every
        redraw: making 250k pairs' rows to count them was seconds; reused until the data changes)."""
        labels, params = self._pair_preference_sql(run_id, min_confidence, calibration_id, principle_weights, raw)
        return self._reused(
            ("count_pair_preferences", labels, tuple(map(str, params))),
            lambda: self._one(f"SELECT count(*) FROM ({labels}) l JOIN pairs p USING (pair_id)", params)[0],
        )

    def _pair_preference_sql(
        self,
        run_id: str,
        min_confidence: float,
        calibration_id: str | None,
        principle_weights: dict[str, float] | None,
        raw: bool,
    ) -> tuple[str, list]:
        """The query of each kept pair's p and calibration (see `pair_preferences`), and its parameters."""
        if run_id == "human":
            labels = """SELECT pair_id, avg((choice = 'a')::INT) AS p, NULL::TEXT AS calibration FROM human_labels
                        WHERE choice IN ('a', 'b') GROUP BY pair_id"""
            params = [min_confidence]
        else:
            if calibration_id is not None:
                p_a, calibration = "l.p_a", "?::TEXT"
                params = [calibration_id]
            elif raw:
                p_a, calibration, params = "l.p_a", "NULL::TEXT", []
            else:
                p_a = "coalesce(l.p_a_calibrated, l.p_a)"
                calibration, params = "any_value(l.calibration_id) FILTER (WHERE l.p_a_calibrated IS NOT NULL)", []
            if principle_weights is not None:
                labels = f"""SELECT pair_id, sum(w.weight * {p_a}) / sum(w.weight) AS p, {calibration} AS calibration
                             FROM {ai_labels_table(calibration_id)} l
                             JOIN (SELECT unnest(?::VARCHAR[]) AS principle_id, unnest(?::DOUBLE[]) AS weight) w
                               USING (principle_id)
                             WHERE l.run_id = ? AND l.p_a IS NOT NULL GROUP BY pair_id HAVING sum(w.weight) > 0"""
                params += [list(principle_weights), list(principle_weights.values()), run_id, min_confidence]
            else:
                labels = f"""SELECT pair_id, avg({p_a}) AS p, {calibration} AS calibration
                             FROM {ai_labels_table(calibration_id)} l
                             WHERE l.run_id = ? AND l.p_a IS NOT NULL GROUP BY pair_id"""
                params += [run_id, min_confidence]
        return f"SELECT * FROM ({labels}) WHERE p <> 0.5 AND abs(2 * p - 1) >= ?", params
