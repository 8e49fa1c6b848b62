"""Runs: every job's row (kind, config, status, progress), the training registry (metrics, the models
finished runs left) and evaluation runs' tables."""

from __future__ import annotations

import pandas as pd

from ..jobs import TRAINING_KINDS, training_kind_name
from ..records import TrainedModel, columns

# runs of a kind whose id holds a text (None: all)
_KIND_CONTAINING = "kind = ? AND (?::TEXT IS NULL OR contains(lower(run_id), lower(?::TEXT)))"


class RunQueries:
    def runs(self, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY created_at DESC"
        return self.con.execute(sql, [kind] if kind else []).df()

    def run_ids(self, kind: str, containing: str | None = None, limit: int = 50, offset: int = 0) -> list[str]:
        """A page of the ids of KIND's runs (those holding CONTAINING, case aside), newest first: a filter's
        choices (`ui.paging.long_choice`)."""
        rows = self.con.execute(
            f"SELECT run_id FROM runs WHERE {_KIND_CONTAINING} ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?",
            [kind, containing, containing, limit, offset],
        ).fetchall()
        return [r[0] for r in rows]

    def count_runs(self, kind: str, containing: str | None = None) -> int:
        return self._one(f"SELECT count(*) FROM runs WHERE {_KIND_CONTAINING}", [kind, containing, containing])[0]

    # --- training runs -----------------------------------------------------------------------

    def train_runs(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        """Every training run (or those of RUN_IDS: a page of the registry) with its status, config, times, final
        model folder (when finished) and its last value of each metric as `final_<name>` columns."""
        runs = self.con.execute(
            """SELECT r.*, m.path AS model_path, m.step AS final_step FROM runs r
               LEFT JOIN trained_models m USING (run_id)
               WHERE list_contains(?, r.kind) AND (?::VARCHAR[] IS NULL OR list_contains(?, r.run_id))
               ORDER BY r.created_at DESC""",
            [list(TRAINING_KINDS), run_ids, run_ids],
        ).df()
        last = self.con.execute(
            """SELECT run_id, name, arg_max(value, step) AS value FROM train_metrics
               WHERE ?::VARCHAR[] IS NULL OR list_contains(?, run_id) GROUP BY run_id, name""",
            [run_ids, run_ids],
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

    def trained_models(self, *, generating_only: bool = False) -> list[TrainedModel]:
        """Every finished training run's model, newest first; `generating_only` leaves out reward models,
        which score and do not generate or judge. Whether the folder still exists is the caller's to check."""
        rows = self.con.execute(
            f"""SELECT {", ".join(columns(TrainedModel))} FROM trained_models
                WHERE NOT (? AND kind = ?) ORDER BY created_at DESC, run_id""",
            [generating_only, training_kind_name("rm")],
        ).fetchall()
        return [TrainedModel(*r) for r in rows]

    # --- evaluation runs ---------------------------------------------------------------------

    def eval_runs(self) -> pd.DataFrame:
        return self.con.execute(
            "SELECT * FROM runs WHERE kind IN ('eval', 'eval-rounds') ORDER BY created_at DESC"
        ).df()

    def inspect_scores(self) -> pd.DataFrame:
        """Every Inspect evaluation's headline metrics, newest first."""
        return self.con.execute("SELECT * FROM inspect_scores ORDER BY created_at DESC, run_id, scorer, metric").df()

    def eval_table(self, table: str, run_id: str) -> pd.DataFrame:
        """One evaluation run's rows of eval_answers, eval_judgments or round_judgments."""
        order = {
            "eval_answers": "prompt_key, wrapper, model",
            "eval_judgments": "prompt_key, wrapper, aspect, model_a, model_b",
            "round_judgments": "trace_id, round, versus_round",
        }[table]  # the primary key after run_id
        return self.con.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY {order}", [run_id]).df()
