"""The counting queries of the agreement dashboard (`cai_core.agreement` turns their cells into figures).

A calibration (`judge_audit`) is applied here, in the query, when the figures ask for one: every AI label's
per-order probability is shifted by its principle's prior and scaled by the Platt fit (`ai_labels_table`), so every
figure, the disagreements and the exported preferences read the calibrated labels.

People's labels are counted per pair (`_HUMAN_COUNTS`, in each query that reads them), so that one pass joins
them to the AI's labels and the same counts give Krippendorff's alpha. The database returns
a few hundred count cells, which keeps a million labels within a fraction of a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class LabelFilter:
    """Which AI labels the figures read. Each field keeps the labels with any of its values; an empty field
    keeps all. A principle filter keeps those principles' labels only, so an ensemble run's pair label
    becomes the mean over the principles kept."""

    run_ids: tuple[str, ...] = ()
    principles: tuple[str, ...] = ()
    judge_models: tuple[str, ...] = ()
    constitution_versions: tuple[str, ...] = ()
    calibration_id: str | None = None  # read the labels through this stored calibration

    @property
    def selects_all(self) -> bool:
        return not (self.run_ids or self.principles or self.judge_models or self.constitution_versions)


def _where(labels: LabelFilter) -> str:
    """A predicate on ai_labels; values are quoted as SQL literals (the queries are built as text)."""
    clauses = [
        f"{column} IN ({', '.join(_literal(v) for v in values)})"
        for column, values in (
            ("run_id", labels.run_ids),
            ("principle_id", labels.principles),
            ("judge_model", labels.judge_models),
            ("constitution_version", labels.constitution_versions),
        )
        if values
    ]
    return " AND ".join(clauses) or "TRUE"


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _logit(p: str) -> str:
    # greatest and least skip NULLs: a failed label's missing probability must stay missing
    clipped = f"CASE WHEN {p} IS NOT NULL THEN greatest(least({p}, 1 - 1e-6), 1e-6) END"
    return f"ln(({clipped}) / (1 - ({clipped})))"


def ai_labels_table(calibration_id: str | None) -> str:
    """ai_labels, or ai_labels read through a stored calibration: per order, P' = sigmoid(slope * (logit P -
    logit prior) + bias), the prior being the label's principle's in that order (no shift for a principle whose
    prior was not measured), and p_a recombined from the two (a chain-of-thought band is not applied again)."""
    if calibration_id is None:
        return "ai_labels"
    fixed = {
        order: f"1 / (1 + exp(-(k.slope * ({_logit(f'l.p_order{order}')} - "
        f"{_logit(f'coalesce(c.prior_order{order}, 0.5)')}) + k.bias)))"
        for order in (1, 2)
    }
    return f"""(SELECT l.* REPLACE ({fixed[1]} AS p_order1, {fixed[2]} AS p_order2,
                                   ({fixed[1]} + 1 - {fixed[2]}) / 2 AS p_a)
                FROM ai_labels l JOIN judge_calibrations k ON k.calibration_id = {_literal(calibration_id)}
                LEFT JOIN calibration_priors c ON c.calibration_id = k.calibration_id
                                              AND c.principle_id = l.principle_id)"""


def _ai_pairs_sql(where: str, source: str = "ai_labels") -> str:
    """The AI's label per (run, pair) among the labels WHERE selects. One label per pair needs no grouping:
    only ensemble runs have several (one per principle) to average, and grouping a million single rows
    would cost more than every figure."""
    return f"""
        SELECT run_id, pair_id, judge_model, constitution_version, p_a, p_order1 AS p1, p_order2 AS p2,
               failed::INT AS failures, principle_id AS principles
        FROM {source} WHERE {where} AND strategy <> 'ensemble'
        UNION ALL
        SELECT run_id, pair_id, any_value(judge_model), any_value(constitution_version), avg(p_a), avg(p_order1),
               avg(p_order2), count(*) FILTER (WHERE failed), 'ensemble'
        FROM {source} WHERE {where} AND strategy = 'ensemble' GROUP BY run_id, pair_id"""


# People's labels counted per pair (a, b, tie; both_bad counts as tie, skip as none), as a CTE each query that
# reads them starts with: counted in the query itself, they are never stale and need no call before it.
_HUMAN_COUNTS = """_human_counts AS (
    SELECT pair_id, count(*) FILTER (WHERE choice = 'a') AS na, count(*) FILTER (WHERE choice = 'b') AS nb,
           count(*) FILTER (WHERE choice IN ('tie', 'both_bad')) AS nt
    FROM human_labels WHERE choice <> 'skip' GROUP BY pair_id)"""


class AgreementQueries:
    def agreement_cells(self, labels: LabelFilter, tie_band: float, bins: int) -> list[dict]:
        """`_agreement_cells`, counted once until the data changes (1M labels: a quarter second a count), which the
        dashboard and the label gate's over the same labels then share."""
        return self._reused(
            ("agreement_cells", labels, float(tie_band), int(bins)),
            lambda: self._agreement_cells(labels, tie_band, bins),
        )

    def _agreement_cells(self, labels: LabelFilter, tie_band: float, bins: int) -> list[dict]:
        """Count cells per (group, AI verdict with ties, without, probability bin), for every grouping in one
        pass: AI rows, failures, position counts, and per human class the number of labels and the sum of
        P(a better) over them. Groups by principle read each label; the others read the per-pair label
        (the same row, except in ensemble runs, whose per-pair means are added as rows of their own)."""
        where, band, source = _where(labels), float(tie_band), ai_labels_table(labels.calibration_id)
        result = self.con.execute(
            f"""WITH {_HUMAN_COUNTS},
                labels AS (
                    SELECT run_id, pair_id, judge_model, constitution_version, strategy, cot, principle_id, p_a,
                           p_order1 AS p1, p_order2 AS p2, failed::INT AS failures, TRUE AS single
                    FROM {source} WHERE {where}
                    UNION ALL
                    SELECT run_id, pair_id, any_value(judge_model), any_value(constitution_version), 'ensemble',
                           bool_or(cot), NULL, avg(p_a), avg(p_order1), avg(p_order2), count(*) FILTER (WHERE failed),
                           FALSE
                    FROM {source} WHERE {where} AND strategy = 'ensemble' GROUP BY run_id, pair_id),
                ai AS (
                    SELECT *, CASE WHEN single THEN principle_id END AS k_principle,
                           NOT single OR strategy <> 'ensemble' AS per_pair,
                           CASE WHEN p_a > 0.5 + {band} THEN 'a' WHEN p_a < 0.5 - {band} THEN 'b'
                                WHEN p_a IS NOT NULL THEN 'tie' END AS v3,
                           CASE WHEN p_a > 0.5 THEN 'a' WHEN p_a < 0.5 THEN 'b' END AS v2,
                           least(floor(p_a * {int(bins)}), {int(bins) - 1})::INT AS bin,
                           p1 IS NOT NULL AND p2 IS NOT NULL AS both_orders
                    FROM labels)
                SELECT CASE WHEN per_pair THEN run_id END AS k_run, CASE WHEN per_pair THEN judge_model END AS k_model,
                       CASE WHEN per_pair THEN constitution_version END AS k_version, k_principle, v3, v2, bin,
                       any_value(judge_model) AS run_model, any_value(constitution_version) AS run_version,
                       any_value(strategy) AS strategy, bool_or(cot) AS cot, count(*) AS ai_rows,
                       sum(failures) AS failures, count(*) FILTER (WHERE both_orders) AS both_orders,
                       count(*) FILTER (WHERE (p1 > 0.5) <> (p2 > 0.5)) AS consistent,
                       sum((p1 > 0.5)::INT + (p2 > 0.5)::INT) AS firsts,
                       sum(coalesce(na, 0)) AS na, sum(coalesce(nb, 0)) AS nb, sum(coalesce(nt, 0)) AS nt,
                       sum(p_a * na) AS pa, sum(p_a * nb) AS pb, sum(p_a * nt) AS pt
                FROM ai LEFT JOIN _human_counts USING (pair_id)
                GROUP BY GROUPING SETS ((k_run, v3, v2, bin), (k_model, v3, v2, bin), (k_version, v3, v2, bin),
                                        (k_principle, v3, v2, bin))"""
        )
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]

    def alpha_counts(self, labels: LabelFilter) -> tuple:
        """Over pairs with at least two people's labels (all of them, or those the selected AI labels cover):
        units, labels, labels per class (a, b, tie), and per class the sum of n_uc (n_uc - 1) / (m_u - 1)."""
        restrict = (
            "" if labels.selects_all else f"AND pair_id IN (SELECT pair_id FROM ai_labels WHERE {_where(labels)})"
        )
        return self._reused(("alpha_counts", labels), lambda: self._alpha_counts(restrict))

    def _alpha_counts(self, restrict: str) -> tuple:
        return self._one(
            f"""WITH {_HUMAN_COUNTS}
                SELECT count(*), sum(na + nb + nt), sum(na), sum(nb), sum(nt),
                       sum(na * (na - 1) / (na + nb + nt - 1)), sum(nb * (nb - 1) / (na + nb + nt - 1)),
                       sum(nt * (nt - 1) / (na + nb + nt - 1))
                FROM _human_counts WHERE na + nb + nt >= 2 {restrict}"""
        )

    def disagreements(self, labels: LabelFilter, limit: int, confidence_floor: float = 0.0) -> pd.DataFrame:
        """Pairs where the AI's verdict and a person's label (a or b) differ, the most confident AI first (only
        those at least `confidence_floor` from 0.5), with both responses, the labels and the per-order
        probabilities. Finds the disagreeing (run, pair)s from the counts first, then fetches their texts."""
        return self._reused(
            ("disagreements", labels, int(limit), float(confidence_floor)),
            lambda: self._disagreements(labels, limit, confidence_floor),
        )

    def _disagreements(self, labels: LabelFilter, limit: int, confidence_floor: float) -> pd.DataFrame:
        return self.con.execute(
            f"""WITH {_HUMAN_COUNTS},
                ai AS ({_ai_pairs_sql(_where(labels), ai_labels_table(labels.calibration_id))}),
                top AS (SELECT ai.* FROM ai JOIN _human_counts h USING (pair_id)
                        WHERE abs(ai.p_a - 0.5) >= {float(confidence_floor)}
                          AND ((ai.p_a > 0.5 AND h.nb > 0) OR (ai.p_a < 0.5 AND h.na > 0))
                        ORDER BY abs(ai.p_a - 0.5) DESC, ai.run_id, ai.pair_id LIMIT {int(limit)})
                SELECT top.run_id, top.pair_id, h.annotator, h.choice AS human,
                       CASE WHEN top.p_a > 0.5 THEN 'a' ELSE 'b' END AS ai, top.p_a, top.p1 AS p_order1,
                       top.p2 AS p_order2, top.principles, h.rationale, p.prompt, p.response_a, p.response_b
                FROM top JOIN human_labels h USING (pair_id) JOIN pairs p USING (pair_id)
                WHERE h.choice IN ('a', 'b') AND h.choice <> CASE WHEN top.p_a > 0.5 THEN 'a' ELSE 'b' END
                ORDER BY abs(top.p_a - 0.5) DESC, top.run_id, top.pair_id, h.annotator LIMIT {int(limit)}"""
        ).df()

    def label_facet_rows(self) -> pd.DataFrame:
        """run_id, judge_model, constitution_version, principle_id and their latest label time, one row each
        distinct combination among the AI labels (a pass over every label: reused until the data changes)."""
        return self._reused(
            ("label_facet_rows",),
            lambda: self.con.execute(
                """SELECT run_id, judge_model, constitution_version, principle_id, max(created_at) AS latest
                   FROM ai_labels GROUP BY ALL"""
            ).df(),
        )

    # --- the judge audit: calibrations, per-principle revision effects ---------------------------------------

    def calibration_rows(self, labels: LabelFilter) -> pd.DataFrame:
        """What a calibration is fitted and reported on: each selected AI label judged in both orders (each
        principle's own, in an ensemble run) on a pair people labelled a or b, with the pair's counts of a and b."""
        return self.con.execute(
            f"""WITH {_HUMAN_COUNTS}
                SELECT l.pair_id, l.principle_id, l.p_order1, l.p_order2, h.na, h.nb
                FROM ai_labels l JOIN _human_counts h USING (pair_id)
                WHERE {_where(labels)} AND l.p_order1 IS NOT NULL AND l.p_order2 IS NOT NULL AND h.na + h.nb > 0
                ORDER BY l.pair_id, l.principle_id, l.run_id"""
        ).df()

    def calibrations(self) -> pd.DataFrame:
        """Every stored calibration (as calibration jobs spool them), newest first: id, run, judge model,
        constitution version, Platt fit, report (a dict) and its priors (principle id: (order 1, order 2))."""
        frame = self.con.execute(
            """SELECT k.*, coalesce(list(c.principle_id ORDER BY c.principle_id) FILTER (c.principle_id IS NOT NULL),
                                    []) AS principles,
                      coalesce(list([c.prior_order1, c.prior_order2] ORDER BY c.principle_id)
                               FILTER (c.principle_id IS NOT NULL), []) AS prior_pairs
               FROM judge_calibrations k LEFT JOIN calibration_priors c USING (calibration_id)
               GROUP BY ALL ORDER BY k.created_at DESC, k.calibration_id"""
        ).df()
        frame["report"] = [json.loads(r) for r in frame["report"]]
        frame["priors"] = [
            {p: tuple(v) for p, v in zip(names, values, strict=True)}
            for names, values in zip(frame.pop("principles"), frame.pop("prior_pairs"), strict=True)
        ]
        return frame

    def revision_steps(self) -> pd.DataFrame:
        """Every judged SL-CAI revision against the answer before it (`cai eval rounds`), from every run:
        round, versus_round, revision_principle_id and p_later, P(the revision is better)."""
        return self.con.execute(
            """SELECT round, versus_round, revision_principle_id, p_later FROM round_judgments
               WHERE versus_round = round - 1 AND p_later IS NOT NULL"""
        ).df()
