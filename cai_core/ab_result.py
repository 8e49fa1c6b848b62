"""What a constitution A/B found (`ab.py` runs it): paired win rates with bootstrap intervals over prompts, per
judging principle and per prompt category, and refusals by phrase on both sets, read back from its folders."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .ab import JUDGMENTS, PROMPTS, ABError, answers_of
from .constitution import load_constitution
from .evalsets import is_refusal
from .jobs import JobFolder, list_job_folders
from .stats import bootstrap_interval, outcome, refusal_rates
from .workspace import Workspace


@dataclass(frozen=True)
class ABResult:
    """What an A/B found; every frame is empty until the judge has judged something."""

    run_id: str
    versions: dict[str, str]  # a, b, judge -> version (the judge's is "neutral"'s version when neutral)
    names: dict[str, str]  # a, b, judge -> the constitution's name
    win_rates: pd.DataFrame  # comparison, win_rate, low, high, n (prompts); plus the paired difference
    by_principle: pd.DataFrame  # comparison, principle_id, win_rate, low, high, n
    by_category: pd.DataFrame  # comparison, label, category, win_rate, low, high, n
    refusals: pd.DataFrame  # answers (A final, B final, initial), label, refusal_rate, low, high, n
    prompts: pd.DataFrame  # per prompt: key, set, label, category, prompt, and each comparison's score

    @property
    def over_refusal(self) -> pd.DataFrame:
        """Refusals on the benign prompts: lower is better."""
        return self.refusals[self.refusals["label"] == "benign"].reset_index(drop=True)


DIFFERENCE = "A − B (each vs its initial)"


def _rate_rows(scores: pd.DataFrame, keys: list[str], resamples: int, seed: int) -> pd.DataFrame:
    """Win rate (the mean per-prompt score; ties half), a 95% bootstrap interval over prompts, and the count."""
    rows = []
    for group, frame in scores.groupby(keys, sort=True):
        values = frame["score"].to_numpy()
        low, high = bootstrap_interval(values, resamples=resamples, seed=seed)
        rows.append((*(group if isinstance(group, tuple) else (group,)), float(values.mean()), low, high, len(values)))
    return pd.DataFrame(rows, columns=[*keys, "win_rate", "low", "high", "n"])


def ab_result(ws: Workspace, run_id: str, *, resamples: int = 2000, seed: int = 0) -> ABResult:
    """Read an A/B's judgments and traces back from its folders and compute its figures."""
    job = JobFolder(ws.runs_dir / run_id)
    if not (job.path / "run.json").exists() or job.spec.get("kind") != "ab":
        raise ABError(f"no A/B run {run_id!r} under {ws.runs_dir}")
    constitutions = {side: load_constitution(job.path / f"constitution-{side}.yaml") for side in ("a", "b", "judge")}
    prompts = pd.DataFrame(job.read_input(PROMPTS)).rename(columns={"id": "key"})
    judge = JobFolder(ws.runs_dir / f"{run_id}-judge")
    judged = pd.DataFrame(judge.read(JUDGMENTS) if judge.path.exists() else [])
    if not judged.empty:
        judged = judged[~judged["failed"].astype(bool) & judged["p_a"].notna()]
    score_columns = ["comparison", "prompt_key", "principle_id", "score"]
    scores = (
        judged.assign(score=judged["p_a"].map(outcome))[score_columns]
        if not judged.empty
        else pd.DataFrame(columns=score_columns)
    )
    # Per prompt and comparison, the mean over the judging principles: the unit the bootstrap resamples.
    per_prompt = scores.groupby(["comparison", "prompt_key"], as_index=False)["score"].mean()
    per_prompt = per_prompt.merge(prompts[["key", "label", "category"]], left_on="prompt_key", right_on="key")
    win_rates = _rate_rows(per_prompt, ["comparison"], resamples, seed)
    wide = per_prompt.pivot(index="prompt_key", columns="comparison", values="score") if not per_prompt.empty else None
    if wide is not None and {"A vs initial", "B vs initial"} <= set(wide.columns):
        # Paired: the same prompt's two improvements over their initial answers, A's minus B's.
        difference = (
            (wide["A vs initial"] - wide["B vs initial"]).dropna().to_frame("score").assign(comparison=DIFFERENCE)
        )
        win_rates = pd.concat([win_rates, _rate_rows(difference, ["comparison"], resamples, seed)], ignore_index=True)
    by_principle = _rate_rows(
        scores.groupby(["comparison", "principle_id", "prompt_key"], as_index=False)["score"].mean(),
        ["comparison", "principle_id"],
        resamples,
        seed,
    )
    by_category = _rate_rows(per_prompt, ["comparison", "label", "category"], resamples, seed)
    table = prompts[["key", "set", "label", "category", "prompt"]]
    if wide is not None:
        table = table.merge(wide.reset_index().rename(columns={"prompt_key": "key"}), on="key", how="left")
    return ABResult(
        run_id,
        {side: c.version for side, c in constitutions.items()},
        {side: c.name for side, c in constitutions.items()},
        win_rates,
        by_principle,
        by_category,
        _refusals(ws, run_id, prompts),
        table,
    )


def _refusals(ws: Workspace, run_id: str, prompts: pd.DataFrame) -> pd.DataFrame:
    """Refusal rates by phrase of A's and B's final answers and of the initial answers, per label, with Wilson
    intervals (`stats.refusal_rates`): on the benign prompts, over-refusal."""
    labels = dict(zip(prompts["key"], prompts["label"], strict=True))
    rows = []
    for side in ("a", "b"):
        answers = answers_of(JobFolder(ws.runs_dir / f"{run_id}-gen-{side}"))
        for key, answer in answers.items():
            rows.append(
                {"model": f"{side.upper()} final", "label": labels.get(key), "refused": is_refusal(answer["final"])}
            )
            if side == "a":  # both generations start from the same seeds: A's initial answers stand for both
                rows.append({"model": "initial", "label": labels.get(key), "refused": is_refusal(answer["initial"])})
    if not rows:
        return pd.DataFrame(columns=["answers", "label", "refusal_rate", "low", "high", "n"])
    rates = refusal_rates(pd.DataFrame(rows).assign(wrapper="none"))
    return rates.drop(columns="wrapper").rename(columns={"model": "answers"})


@dataclass(frozen=True)
class ABPrompt:
    """One prompt of an A/B: both traces, round by round, and what the judge said."""

    key: str
    prompt: str
    label: str
    category: str
    traces: dict[str, list[dict]]  # a, b -> steps (round, principle_id, critique, response)
    judgments: pd.DataFrame  # comparison, principle_id, p_order1, p_order2, p_a


def ab_prompt(ws: Workspace, run_id: str, key: str) -> ABPrompt:
    job = JobFolder(ws.runs_dir / run_id)
    prompt = next((p for p in job.read_input(PROMPTS) if p["id"] == key), None)
    if prompt is None:
        raise ABError(f"A/B {run_id} has no prompt {key!r}")
    traces = {}
    for side in ("a", "b"):
        answers = answers_of(JobFolder(ws.runs_dir / f"{run_id}-gen-{side}"))
        traces[side] = answers[key]["steps"] if key in answers else []
    judge = JobFolder(ws.runs_dir / f"{run_id}-judge")
    judged = pd.DataFrame([j for j in judge.read(JUDGMENTS) if j["prompt_key"] == key] if judge.path.exists() else [])
    columns = ["comparison", "principle_id", "p_order1", "p_order2", "p_a"]
    return ABPrompt(
        key,
        prompt["prompt"],
        prompt["label"],
        prompt["category"],
        traces,
        judged[columns] if not judged.empty else pd.DataFrame(columns=columns),
    )


def ab_runs(ws: Workspace, versions: set[str] | None = None) -> list[JobFolder]:
    """The A/B runs, newest first; with `versions`, only those that compare one of them."""
    runs = [job for job in list_job_folders(ws.runs_dir) if job.spec["kind"] == "ab"]
    if versions is None:
        return runs
    return [job for job in runs if {_version(job, "a"), _version(job, "b")} & versions]


def _version(job: JobFolder, side: str) -> str | None:
    path = job.path / f"constitution-{side}.yaml"
    return load_constitution(path).version if path.exists() else None
