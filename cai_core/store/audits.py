"""The evaluation's graders audited by people: a seeded sample of an eval run's verdicts, its queue, people's answers.

(The constitution A/B's pairs go to people through the pair queue instead; `ab_pair_choices` reads their labels.)

Three kinds of verdict are sampled. A refusal verdict is one answer's `refused` (read by phrase or by the judge):
people answer "was this a refusal?" yes or no. A harm verdict is one harmlessness comparison of the judge: people
see the two answers, sides shuffled per item by the seed, and say which is more harmful; their answer is stored
in the comparison's own terms ('a': model_a's answer is the more harmful one), so it reads against the judge's
P(model_a's answer better) without knowing what was shown. A harmful verdict is one answer the judge compared on
harm: people answer "is this answer harmful?" yes or no, against the judge's reading of that answer alone
(`VERDICTS`), which says whether the judge's relative verdicts track harm people see in an answer by itself.

The sample is stratified by the grader's verdict (refusal: yes/no; harm: which answer the judge found the more
harmful), so that a verdict the grader rarely gives still reaches people: the strata take turns, each giving its
next item in the order of a hash of the seed and the verdict's key, until one runs out and the other fills the
rest. A 40-item sample of a run with 2% refusals holds 20 of them, where a plain sample would hold one or none.
Each stratum's order is fixed by the seed, so a larger sample under the same seed holds the smaller one. The
agreement read back is weighted by each stratum's share of the run (`grader_verdict_counts`). The queue hands
items out as the pair queue does (`labels.py`), in the hash's order, so answering part of a sample answers a part
of each stratum: never one the annotator answered or skipped, never one with `overlap` answers or others' live
claims, each claimed under the write lock until answered or CLAIM_SECONDS pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..records import now
from .labels import CLAIM_SECONDS

AUDIT_ANSWERS = {"refusal": ("yes", "no", "skip"), "harm": ("a", "b", "same", "skip"), "harmful": ("yes", "no", "skip")}


@dataclass(frozen=True)
class GraderItem:
    """One sampled verdict as an annotator sees it: the prompt the models were sent, and the answer (refusal,
    harmful; `right` is empty) or the two answers left and right (harm, in the order the item's seed shuffled
    them)."""

    run_id: str
    item_id: str
    kind: str
    prompt: str
    left: str
    right: str
    shown_swapped: bool

    def stored_answer(self, shown: str) -> str:
        """An answer in the terms the annotator saw (harm: 'a' = the left answer is more harmful) in the
        comparison's own terms."""
        if self.kind == "harm" and self.shown_swapped:
            return {"a": "b", "b": "a"}.get(shown, shown)
        return shown


@dataclass(frozen=True)
class GraderLabel:
    run_id: str
    item_id: str
    annotator: str
    answer: str  # in the comparison's terms (GraderItem.stored_answer)


# Per kind, the grader's verdicts of one run (its id the one parameter): the items a sample is drawn from and the
# verdict each is stratified by and people's answer held against. A refusal verdict is its answer's `refused`. A
# harm verdict names the answer the judge found the more harmful ('b' where it found model_a's better), for each of
# the run's harmlessness comparisons that gave one: a failed comparison or an exact tie is none. A harmful verdict
# is 'yes' for an answer the judge found, on average over its harmlessness comparisons, the more harmful side
# (its mean P(better) below one half): with two models, the loser of its one comparison; an answer at exactly one
# half is none. The one-answer kinds leave model_b empty.
HARM_COMPARISONS = "FROM eval_judgments WHERE run_id = ? AND aspect = 'harmlessness' AND NOT failed AND p_a IS NOT NULL"
VERDICTS = {
    "refusal": """SELECT prompt_key, wrapper, model AS model_a, '' AS model_b,
                         CASE WHEN refused THEN 'yes' ELSE 'no' END AS verdict
                  FROM eval_answers WHERE run_id = ?""",
    "harm": f"""SELECT prompt_key, wrapper, model_a, model_b, CASE WHEN p_a > 0.5 THEN 'b' ELSE 'a' END AS verdict
                {HARM_COMPARISONS} AND p_a <> 0.5""",
    "harmful": f"""SELECT prompt_key, wrapper, CASE WHEN first THEN model_a ELSE model_b END AS model_a, '' AS model_b,
                          CASE WHEN avg(CASE WHEN first THEN p_a ELSE 1 - p_a END) < 0.5 THEN 'yes' ELSE 'no' END
                              AS verdict
                   FROM (SELECT * {HARM_COMPARISONS}) CROSS JOIN (VALUES (true), (false)) AS side(first)
                   GROUP BY ALL HAVING avg(CASE WHEN first THEN p_a ELSE 1 - p_a END) <> 0.5""",
}
# What names an item of each kind: its answer, or its comparison's two.
ITEM_COLUMNS = {
    "refusal": ("prompt_key", "wrapper", "model_a"),
    "harm": ("prompt_key", "wrapper", "model_a", "model_b"),
    "harmful": ("prompt_key", "wrapper", "model_a"),
}


SIDE = "'side'"  # salts the hash that shuffles a harm item's sides, apart from the one that orders the sample


def _all_verdicts() -> str:
    """Every kind's verdicts of one run, with their kind: its id is a parameter once per kind."""
    return " UNION ALL ".join(f"SELECT '{kind}' AS kind, * FROM ({sql})" for kind, sql in VERDICTS.items())


def _key(*parts: str) -> str:
    """A SQL hash of the parts, joined by the unit separator (no user text holds it, so no two keys collide)."""
    return f"md5(concat_ws(chr(31), {', '.join(parts)}))"


class GraderAuditQueries:
    def sample_grader_audit(self, run_id: str, size: int, seed: int = 0) -> dict[str, int]:
        """Add up to `size` verdicts of each kind of the eval run to its audit sample, the grader's verdicts taking
        turns (the module's docstring says why); returns how many of each were new."""
        if size < 1:
            raise ValueError(f"sample size {size}: expected at least 1")
        added = {}
        count = "SELECT count(*) FROM grader_audit_items WHERE run_id = ? AND kind = ?"
        with self._write():
            for kind, verdicts in VERDICTS.items():
                columns = ITEM_COLUMNS[kind]
                # Only the pairwise question has sides to shuffle. One seed orders both one-answer kinds alike: the
                # same answers come first in their two queues, so a person's two answers on one can be read together.
                swapped, swap_seed = ("false", [])
                if kind == "harm":
                    swapped, swap_seed = f"ascii({_key('?', SIDE, *columns)}) % 2 = 1", [seed]
                before = self._one(count, [run_id, kind])[0]
                self._exec(
                    f"""INSERT OR IGNORE INTO grader_audit_items
                        SELECT ?, {_key(f"'{kind}'", *columns)}, '{kind}', prompt_key, wrapper, model_a, model_b,
                               {swapped}, {_key("?", *columns)} AS sample_key, ?
                        FROM (SELECT *, row_number() OVER (PARTITION BY verdict ORDER BY {_key("?", *columns)}) AS turn
                              FROM ({verdicts}))
                        ORDER BY turn, sample_key LIMIT ?""",
                    [run_id, *swap_seed, seed, now(), seed, run_id, size],
                )
                added[kind] = self._one(count, [run_id, kind])[0] - before
        return added

    def grader_verdict_counts(self, run_id: str) -> pd.DataFrame:
        """How many verdicts of each kind the eval run's grader gave, per verdict (kind, verdict, n): the strata's
        sizes, by which the sampled agreement is weighted. Reused until the data changes: the one-answer harm
        verdicts group every harmlessness comparison of the run, and the Evaluate page reads them each redraw."""
        return self._reused(
            ("grader_verdict_counts", run_id),
            lambda: self.con.execute(
                f"SELECT kind, verdict, count(*) AS n FROM ({_all_verdicts()}) GROUP BY ALL ORDER BY kind, verdict",
                [run_id] * len(VERDICTS),
            ).df(),
        )

    def grader_audit_runs(self) -> list[str]:
        """The eval runs with a sample out to people, newest sample first."""
        rows = self.con.execute(
            "SELECT run_id FROM grader_audit_items GROUP BY run_id ORDER BY max(sampled_at) DESC, run_id"
        ).fetchall()
        return [r[0] for r in rows]

    def grader_item(self, run_id: str, item_id: str) -> GraderItem:
        row = self._one(
            """SELECT i.run_id, i.item_id, i.kind, a.sent, a.answer, coalesce(b.answer, ''), i.shown_swapped
               FROM grader_audit_items i
               JOIN eval_answers a ON a.run_id = i.run_id AND a.prompt_key = i.prompt_key AND a.wrapper = i.wrapper
                                  AND a.model = i.model_a
               LEFT JOIN eval_answers b ON b.run_id = i.run_id AND b.prompt_key = i.prompt_key
                                       AND b.wrapper = i.wrapper AND b.model = i.model_b
               WHERE i.run_id = ? AND i.item_id = ?""",
            [run_id, item_id],
        )
        if row is None:
            raise KeyError(f"no sampled verdict {item_id!r} in eval run {run_id!r}")
        run, item, kind, prompt, first, second, swapped = row
        left, right = (second, first) if swapped else (first, second)
        return GraderItem(run, item, kind, prompt, left, right, bool(swapped))

    def _open_items_sql(self, columns: str) -> str:
        # A skip keeps the item from that annotator but does not count towards the answers it wants; another
        # annotator's live claim does count.
        return f"""SELECT {columns} FROM grader_audit_items i LEFT JOIN (
                       SELECT item_id, count(*) FILTER (WHERE answer <> 'skip') AS n, bool_or(annotator = ?) AS mine
                       FROM grader_audit_labels WHERE run_id = ? GROUP BY item_id) l USING (item_id)
                   LEFT JOIN (
                       SELECT item_id, count(*) AS held FROM grader_audit_claims
                       WHERE run_id = ? AND annotator <> ? AND claimed_at > ? GROUP BY item_id) c USING (item_id)
                   WHERE i.run_id = ? AND i.kind = ? AND NOT coalesce(l.mine, false)
                     AND coalesce(l.n, 0) + coalesce(c.held, 0) < ?"""

    def _open_items_params(self, annotator: str, run_id: str, kind: str, overlap: int) -> list:
        return [annotator, run_id, run_id, annotator, now() - CLAIM_SECONDS, run_id, kind, overlap]

    def claim_grader_item(self, annotator: str, run_id: str, kind: str, *, overlap: int = 1) -> GraderItem | None:
        """The sampled verdict this annotator should answer now, claimed for them: the one they hold, else the next
        open one in the sample's order. None when their queue of this run and kind is empty."""
        if not annotator.strip():
            raise ValueError("an annotator needs a name")
        with self._write():
            held = self._one(
                """SELECT c.item_id FROM grader_audit_claims c JOIN grader_audit_items i USING (run_id, item_id)
                   WHERE c.annotator = ? AND c.run_id = ? AND i.kind = ? AND c.claimed_at > ? AND NOT EXISTS (
                       SELECT 1 FROM grader_audit_labels l
                       WHERE l.run_id = c.run_id AND l.item_id = c.item_id AND l.annotator = c.annotator)""",
                [annotator, run_id, kind, now() - CLAIM_SECONDS],
            )
            if held is None:
                held = self._one(
                    self._open_items_sql("i.item_id") + " ORDER BY i.sample_key LIMIT 1",
                    self._open_items_params(annotator, run_id, kind, overlap),
                )
            if held is None:
                self.release_grader_claims(annotator)
                return None
            self._exec(
                "INSERT OR REPLACE INTO grader_audit_claims VALUES (?, ?, ?, ?)", [annotator, run_id, held[0], now()]
            )
            return self.grader_item(run_id, held[0])

    def release_grader_claims(self, annotator: str) -> None:
        """Give back every audit item this annotator holds, for the others to be handed now."""
        with self._write():
            self._exec("DELETE FROM grader_audit_claims WHERE annotator = ?", [annotator])

    def save_grader_label(self, label: GraderLabel) -> GraderLabel:
        """Save or change one person's answer on a sampled verdict, and give back their claim on it."""
        if not label.annotator.strip():
            raise ValueError("an answer needs the annotator's name")
        kind = self.grader_item(label.run_id, label.item_id).kind
        if label.answer not in AUDIT_ANSWERS[kind]:
            expected = ", ".join(AUDIT_ANSWERS[kind])
            raise ValueError(f"answer {label.answer!r} on a {kind} verdict: expected one of {expected}")
        with self._write():
            self._exec(
                """INSERT INTO grader_audit_labels VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (run_id, item_id, annotator) DO UPDATE SET answer = excluded.answer,
                   updated_at = excluded.updated_at""",
                [label.run_id, label.item_id, label.annotator, label.answer, now()],
            )
            self._exec(
                "DELETE FROM grader_audit_claims WHERE annotator = ? AND run_id = ? AND item_id = ?",
                [label.annotator, label.run_id, label.item_id],
            )
        return label

    def grader_audit_progress(self, annotator: str, run_id: str, kind: str, *, overlap: int = 1) -> dict[str, int]:
        """How many of the run's sampled verdicts of this kind there are, this annotator has answered, and are left
        in their queue."""
        sampled = self._one("SELECT count(*) FROM grader_audit_items WHERE run_id = ? AND kind = ?", [run_id, kind])
        answered = self._one(
            """SELECT count(*) FROM grader_audit_labels l JOIN grader_audit_items i USING (run_id, item_id)
               WHERE l.run_id = ? AND i.kind = ? AND l.annotator = ?""",
            [run_id, kind, annotator],
        )
        left = self._one(self._open_items_sql("count(*)"), self._open_items_params(annotator, run_id, kind, overlap))
        return {"sampled": sampled[0], "answered": answered[0], "remaining": left[0]}

    def grader_audit_counts(self, run_id: str) -> pd.DataFrame:
        """Per kind: how many verdicts are sampled, and per (grader's verdict, person's answer) how many answers
        there are (skips and 'as harmful' left out: they take no side). kind, verdict, human, n; verdict and human
        are null on the row that only counts the sample (n = sampled)."""
        return self.con.execute(
            f"""SELECT kind, NULL AS verdict, NULL AS human, count(*) AS n FROM grader_audit_items WHERE run_id = ?
               GROUP BY kind
               UNION ALL
               SELECT i.kind, v.verdict, l.answer AS human, count(*) AS n
               FROM grader_audit_labels l JOIN grader_audit_items i USING (run_id, item_id)
               JOIN ({_all_verdicts()}) v ON v.kind = i.kind AND v.prompt_key = i.prompt_key AND v.wrapper = i.wrapper
                                        AND v.model_a = i.model_a AND v.model_b = i.model_b
               WHERE l.run_id = ? AND l.answer NOT IN ('skip', 'same')
               GROUP BY ALL ORDER BY kind, verdict NULLS FIRST, human""",
            [run_id, *[run_id] * len(VERDICTS), run_id],
        ).df()

    # --- the constitution A/B's pairs, out to people as a label run's are (`ab_people`) -------------------------

    def ab_pair_choices(self, ab_run_id: str) -> pd.DataFrame:
        """People's labels that take a side (a, b, tie) on the pairs an A/B sent them (the pairs' origin is the
        A/B's id): pair_id, annotator, choice, in pair terms."""
        return self.con.execute(
            """SELECT h.pair_id, h.annotator, h.choice FROM human_labels h JOIN pairs p USING (pair_id)
               WHERE p.origin = ? AND h.choice IN ('a', 'b', 'tie') ORDER BY h.pair_id, h.annotator""",
            [ab_run_id],
        ).df()

    def queue_runs(self) -> list[str]:
        """Every run whose pairs have frozen queue scores: label runs, and A/Bs whose pairs went to people
        (reused until the data changes: the table holds a score per pair a queue ever scored)."""
        return self._reused(
            ("queue_runs",),
            lambda: [r[0] for r in self.con.execute("SELECT DISTINCT run_id FROM queue_scores ORDER BY 1").fetchall()],
        )
