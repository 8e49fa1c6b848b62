"""The judge audit over the store and the judge: fit and store a calibration of a label run's judge, score the
disagreement-first queue, and follow how its estimate tightens as labels arrive.

The arithmetic lives beside it, on arrays the store returns (one row per AI-labelled pair), so the page, the CLI
and the tests share it: `judge_verdict` (is the judge trustworthy; which principles to rewrite),
`judge_calibration` (contextual calibration, then Platt scaling) and `judge_queue` (disagreement-first
annotation, with its reweighted estimate).

Probabilities follow `feedback.py`: in order 1 response a is shown first and `p1` = P("A"); in order 2 response b
is shown first and `p2` = P("A"), the first-shown option again; the pair's label is p_a = (p1 + 1 - p2) / 2.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from .config import CheckedConfig
from .jobs import JobFolder, JobKind, Plan, digest
from .judge_calibration import JudgeCalibration, PlattScaling, calibrate
from .judge_queue import contest_score, queue_estimates, queue_keys, served_agreement

# --- over the store and the judge ----------------------------------------------------------------------------

# Zhao et al. 2021's content-free inputs, as a conversation and both responses: nothing in them to prefer, so
# what the judge prefers is where the option stands. The set is symmetric, so the priors of the two orders differ
# only by what the few-shot examples or reasoning add.
CONTENT_FREE = ("N/A", "[MASK]", "")


def measure_priors(judge, principles) -> dict[str, tuple[float, float]]:
    """The judge's P(first shown) on content-free pairs, per principle and order (mean over the pairs)."""
    from .records import Pair

    pairs = [
        Pair(f"content-free-{i}-{j}", a or " ", a, b, "import", "content-free", 0, "", "")
        for i, a in enumerate(CONTENT_FREE)
        for j, b in enumerate(CONTENT_FREE)
    ]
    verdicts = judge.label([(pair, principle) for principle in principles for pair in pairs])
    priors = {}
    for k, principle in enumerate(principles):
        mine = verdicts[k * len(pairs) : (k + 1) * len(pairs)]
        p1 = [v.p_order1 for v in mine if v.p_order1 is not None]
        p2 = [v.p_order2 for v in mine if v.p_order2 is not None]
        if p1 and p2:
            priors[principle.id] = (float(np.mean(p1)), float(np.mean(p2)))
    return priors


CALIBRATION_INPUT = "calibration_rows"  # the human-labelled AI labels the fit reads, copied in when prepared
CALIBRATED_RUN = "calibrated_run"  # one row: the label run, its judge's name and settings, its principles


@dataclass
class CalibrateConfig(CheckedConfig):
    label_run: str = field(metadata={"help": "The label run whose judge to calibrate."})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Ask this judge model for the priors instead of the run's (e.g. another engine).",
            "model_spec": True,
        },
    )
    run_id: str | None = field(
        default=None, metadata={"help": "The calibration's id; by default cal-RUN-HASH of the labels it is fitted on."}
    )


def _plan(config: CalibrateConfig, workspace, store=None):
    """A calibration's job: the run's judge, its settings and its constitution (as the run recorded them), and its
    labels of human-labelled pairs with their counts, copied in from the store (opened here unless given), so that
    the job never opens the database. The job's id is the calibration's: cal-RUN-HASH of those labels (and of
    `model`), so calibrating the same labels again finds the same job."""
    from .auth import require_operator
    from .constitution import parse_constitution
    from .store import LabelFilter

    require_operator("fit a calibration")
    if store is None:
        from .store import Store

        with Store.open(workspace) as opened:
            opened.ingest(workspace.runs_dir)
            return _plan(config, workspace, opened)
    run_id = config.label_run
    facets = store.label_facet_rows()
    mine = facets[facets.run_id == run_id]
    if mine.empty:
        raise ValueError(f"label run {run_id!r} has no AI labels: run `cai label` first (or pick another run)")
    label_job = JobFolder(workspace.runs_dir / run_id)
    if not (label_job.path / "run.json").exists():
        raise ValueError(
            f"label run {run_id!r}: its folder {label_job.path} is gone, so its judge cannot be asked again"
        )
    rows = store.calibration_rows(LabelFilter(run_ids=(run_id,)))
    if rows.empty:
        raise ValueError(f"label run {run_id!r}: no pair it judged in both orders has a person's a or b label")
    spec = label_job.spec
    if "constitution" not in spec:
        raise ValueError(
            f"label run {run_id!r}: its run.json holds no constitution, so its judge cannot be asked again"
        )
    labels = json.loads(rows.to_json(orient="records"))
    fitted_on = digest([labels, config.model], 8)
    calibrated = {
        "label_run": run_id,
        "judge_model": str(mine.judge_model.iloc[0]),
        "constitution_version": str(mine.constitution_version.iloc[0]),
        "judge_settings": spec.get("config") or {},
        "principles": sorted(set(mine.principle_id)),
    }
    return Plan(
        config.model or spec["model"],
        constitution=parse_constitution(spec["constitution"]["content"], f"run {run_id}"),
        inputs={CALIBRATION_INPUT: labels, CALIBRATED_RUN: [calibrated]},
        config=dataclasses.replace(config, run_id=config.run_id or f"cal-{run_id}-{fitted_on}"),
    )


class CalibrationWork:
    """A calibration as a job (`jobs.run_job`): the judge's priors measured one principle a batch (each spooled as
    `calibration_priors`), then the Platt fit on the copied labels, spooled as `judge_calibrations`; `done` counts
    principles asked and the fit."""

    unit = "step"

    def __init__(self, job, workspace, backend=None):
        from .constitution import parse_constitution

        self.job, self.workspace, self.backend = job, workspace, backend
        self.engine = ""
        self.judge = None
        [self.calibrated] = job.read_input(CALIBRATED_RUN)
        constitution = parse_constitution(job.spec["constitution"]["content"], f"run {self.calibrated['label_run']}")
        self.constitution = constitution
        self.principles = [p for p in constitution.principles if p.id in set(self.calibrated["principles"])]
        self.priors = {
            row["principle_id"]: (row["prior_order1"], row["prior_order2"]) for row in job.read("calibration_priors")
        }
        self.asked = set(self.priors)  # and those asked by this process that gave no prior (no probability)
        self.fitted = job.records_path("judge_calibrations").exists()

    def total(self) -> int:
        return len(self.principles) + 1

    def done(self) -> int:
        return len(self.asked) + int(self.fitted)

    def batches(self):
        yield from ([p] for p in self.principles if p.id not in self.asked)
        if not self.fitted:
            yield []  # the fit

    def step(self, principles) -> None:
        if principles:
            self._measure(principles)
        else:
            self._fit()

    def _measure(self, principles) -> None:
        from .backends import load_backend
        from .feedback import Judge
        from .jobs import engine_name
        from .records import CalibrationPrior, to_row

        if self.judge is None:
            self.backend = self.backend or load_backend(self.job.spec["model"], self.workspace)
            self.job.record_engines(judge=self.backend)
            self.engine = engine_name(self.backend)
            self.judge = Judge.from_label_settings(self.backend, self.constitution, self.calibrated["judge_settings"])
        priors = measure_priors(self.judge, principles)
        self.job.append(
            "calibration_priors",
            [to_row(CalibrationPrior(self.job.run_id, p, first, second)) for p, (first, second) in priors.items()],
        )
        self.priors |= priors
        self.asked |= {p.id for p in principles}

    def _fit(self) -> None:
        import pandas as pd

        from .records import StoredCalibration, to_row

        rows = pd.DataFrame(self.job.read_input(CALIBRATION_INPUT))
        expanded = rows.loc[rows.index.repeat(rows.na + rows.nb)]
        people_chose_a = np.concatenate([[1.0] * int(r.na) + [0.0] * int(r.nb) for r in rows.itertuples()])
        calibration = calibrate(
            list(expanded.pair_id),
            list(expanded.principle_id),
            expanded.p_order1.to_numpy(),
            expanded.p_order2.to_numpy(),
            people_chose_a,
            self.priors,
        )
        stored = StoredCalibration(
            self.job.run_id,
            self.calibrated["label_run"],
            self.calibrated["judge_model"],
            self.calibrated["constitution_version"],
            calibration.platt.slope,
            calibration.platt.bias,
            json.dumps(calibration.report),
        )
        self.job.append("judge_calibrations", [to_row(stored)])
        self.fitted = True


def calibrate_run(store, workspace, run_id: str, *, model: str | None = None, backend=None):
    """Calibrate a label run's judge here and now, through its job (`CALIBRATE`):
    its priors measured afresh with the run's judge (or `model`), constitution, few-shot and reasoning settings;
    Platt fitted on the run's labels of human-labelled pairs. Returns the calibration's id and the calibration,
    as the store holds it once it has taken the job's records in."""
    from .jobs import run

    job = run("calibrate", CalibrateConfig(label_run=run_id, model=model), workspace, store=store, backend=backend)
    progress = job.progress()
    if progress.status != "done":
        raise ValueError(f"calibration {job.run_id} {progress.status}: {progress.message}")
    store.ingest(workspace.runs_dir)
    return job.run_id, stored_calibration(store, job.run_id)


def stored_calibration(store, calibration_id: str) -> JudgeCalibration:
    found = store.calibrations()
    found = found[found.calibration_id == calibration_id]
    if found.empty:
        raise ValueError(f"no calibration {calibration_id!r}: fit one with `cai calibrate --run-id RUN`")
    row = found.iloc[0]
    return JudgeCalibration(row.priors, PlattScaling(row.slope, row.bias), row.report)


def score_queue(store, run_id: str) -> int:
    """Freeze contest scores and queue keys for the pairs a label run judged (those not scored before): flips
    under swap, P near 0.5, principles' spread, and people's split as it stands now. Returns how many pairs were
    newly scored."""
    import pandas as pd

    inputs = store.queue_score_inputs(run_id)
    if inputs.empty:
        return 0
    labelled = (inputs.na + inputs.nb).to_numpy(float)
    split = np.where(labelled >= 2, 2 * np.minimum(inputs.na, inputs.nb) / np.maximum(labelled, 1), 0.0)
    scores = contest_score(inputs.p1.to_numpy(float), inputs.p2.to_numpy(float), inputs.spread.to_numpy(float), split)
    ids = list(inputs.pair_id)
    frame = pd.DataFrame({"pair_id": ids, "score": scores, "queue_key": queue_keys(ids, scores, seed=run_id)})
    return store.save_queue_scores(run_id, frame)


def queue_tightening(store, run_id: str):
    """The disagreement-first queue's labels so far, as a table of how the agreement estimate tightens: per
    number of labelled pairs k (in serving order), the reweighted estimate with its interval, and the plain mean
    of those pairs' agreement (biased towards the hard pairs the queue serves first)."""
    import pandas as pd

    columns = ["labelled_pairs", "estimate", "low", "high", "plain_mean"]
    served = store.queue_served_labels(run_id)
    if served.empty:  # no queue in use: the run's scores and labels (a million, say) are not read
        return pd.DataFrame(columns=columns)
    scores, inputs = store.queue_scores(run_id), store.queue_score_inputs(run_id)
    if scores.empty:
        return pd.DataFrame(columns=columns)
    p_a = dict(zip(inputs.pair_id, (inputs.p1 + 1 - inputs.p2) / 2, strict=True))
    agrees, labelled = served_agreement(served, scores, p_a)
    estimates = queue_estimates(agrees, labelled, scores.score.to_numpy(float))
    return pd.DataFrame(
        [(k, e.value, e.low, e.high, float(agrees[:k].mean())) for k, e in enumerate(estimates, start=1)],
        columns=columns,
    )


def _calibration_work(job, config: CalibrateConfig, workspace, backend=None) -> CalibrationWork:
    return CalibrationWork(job, workspace, backend)


CALIBRATE = JobKind(
    "calibrate", CalibrateConfig, _plan, _calibration_work, "calibration", input=CALIBRATION_INPUT, sources=("store",)
)
