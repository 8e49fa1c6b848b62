"""An evaluation's figures and charts, drawn once for the page, the CLI and a single-file HTML report."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from .agreement import judge_model_verdict
from .grader_audit import GraderAgreement, grader_agreement
from .judge_verdict import Verdict
from .reports import REPORT_TEMPLATE, render_report
from .stats import principle_effects, quality_by_round, ratings, refusal_rates, win_rates
from .store import Store

ROUNDS_GRADER = "harm by judge (rounds run): unaudited grader (people audit a comparison run's verdicts only)"


@dataclass(frozen=True)
class EvalSummary:
    run_id: str | None  # the comparison run
    rounds_run_id: str | None  # the SL-CAI rounds run
    answers: pd.DataFrame
    judgments: pd.DataFrame
    win_rates: pd.DataFrame
    ratings: pd.DataFrame
    refusals: pd.DataFrame
    principles: pd.DataFrame
    rounds: pd.DataFrame
    settings: dict[str, dict] = field(default_factory=dict)  # run id -> what the run was asked to do
    judge_verdicts: dict[str, Verdict] = field(default_factory=dict)  # judge model -> its audit's verdict
    grader_audits: dict[str, GraderAgreement] = field(default_factory=dict)  # refusal, harm, harmful -> audit

    def grader_notes(self) -> dict[str, str]:
        """What to say beside each refusal and harmlessness chart, by chart name: the grader it rests on and that
        grader's agreement with people, or that it is unaudited."""
        notes = {}
        if "refusal" in self.grader_audits:
            notes["refusals"] = str(self.grader_audits["refusal"])
        harm = [str(self.grader_audits[kind]) for kind in ("harm", "harmful") if kind in self.grader_audits]
        if harm:
            notes["win_rate_harmlessness"] = notes["ratings"] = "; ".join(harm)
        if self.rounds_run_id:
            # people audit a comparison run's sample only: nothing checks the rounds run's judge
            notes["principles"] = notes["rounds"] = ROUNDS_GRADER
        return notes

    def caveats(self) -> list[str]:
        """What to say beside the judged figures: one line for each judge whose audit finds it unreliable."""
        return [
            f"The judge {judge} is unreliable by its audit on the Agreement page (poor: "
            f"{', '.join(s.name for s in verdict.signals if s.grade == 'poor')}), so the win rates and other judged "
            "figures here may tell more about the judge than about the models."
            for judge, verdict in self.judge_verdicts.items()
            if verdict.name == "unreliable"
        ]

    def tables(self) -> list[tuple[str, pd.DataFrame]]:
        """The figures behind the charts, titled (with the grader they rest on, where people audit it), leaving
        out those with no data."""
        notes = self.grader_notes()

        def noted(title: str, chart: str) -> str:
            return f"{title}. Grader: {notes[chart]}" if chart in notes else title

        titled = [
            (
                noted("Win rates (ties count half; 95% bootstrap interval over prompts)", "win_rate_harmlessness"),
                self.win_rates,
            ),
            (noted("Bradley-Terry ratings, Elo scale (95% bootstrap interval)", "ratings"), self.ratings),
            (
                noted("Refusal rates (harmful prompts: refusal; benign prompts: over-refusal; Wilson 95%)", "refusals"),
                self.refusals,
            ),
            (noted("Per principle: P(revision better than the answer before it)", "principles"), self.principles),
            (noted("Harmlessness by round: P(better than the initial answer)", "rounds"), self.rounds),
        ]
        return [(title, frame) for title, frame in titled if not frame.empty]


def summarize(store: Store, run_id: str | None, rounds_run_id: str | None = None) -> EvalSummary:
    empty = pd.DataFrame()
    answers = store.eval_table("eval_answers", run_id) if run_id else empty
    judgments = store.eval_table("eval_judgments", run_id) if run_id else empty
    round_judgments = store.eval_table("round_judgments", rounds_run_id) if rounds_run_id else empty
    has_judgments = not judgments.empty and judgments["p_a"].notna().any()
    has_rounds = not round_judgments.empty
    runs = store.eval_runs()
    settings = {
        row.run_id: {**json.loads(row.config), "constitution version": row.constitution_version}
        for row in runs.itertuples()
        if row.run_id in (run_id, rounds_run_id)
    }
    judges = sorted({*_judges(judgments), *_judges(round_judgments)})
    refusals_by = settings.get(run_id, {}).get("refusals", "phrases")
    return EvalSummary(
        run_id=run_id,
        rounds_run_id=rounds_run_id,
        answers=answers,
        judgments=judgments,
        win_rates=win_rates(judgments) if has_judgments else empty,
        ratings=ratings(judgments) if has_judgments else empty,
        refusals=refusal_rates(answers) if not answers.empty else empty,
        principles=principle_effects(round_judgments) if has_rounds else empty,
        rounds=quality_by_round(round_judgments) if has_rounds else empty,
        settings=settings,
        judge_verdicts={judge: judge_model_verdict(store, judge) for judge in judges},
        grader_audits=grader_agreement(store, run_id, refusals_by) if run_id else {},
    )


def chart_text(values):
    """User text (a model's, wrapper's, principle's or run's name) as a plotly chart must be given it: plotly reads
    `<b>`, `<i>`, `<br>`, `<a>` and more as markup in every label, tick, legend entry and hover box, and shows the
    entities `&lt;`, `&gt;`, `&amp;` as the characters. A string, or a Series of values."""
    if isinstance(values, str):
        return html.escape(values, quote=False)
    return values.astype(str).map(lambda value: html.escape(value, quote=False))


def _judges(judgments: pd.DataFrame) -> list[str]:
    return list(judgments["judge_model"].dropna().unique()) if "judge_model" in judgments else []


def _errors(frame: pd.DataFrame, value: str, low: str = "low", high: str = "high") -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "array": frame[high] - frame[value],
        "arrayminus": frame[value] - frame[low],
    }


def win_rate_chart(summary: EvalSummary, aspect: str) -> go.Figure:
    """Each model's win rate against all the others, per wrapper, with its 95% interval."""
    frame = summary.win_rates
    frame = frame[(frame["aspect"] == aspect) & (frame["opponent"] == "all")]
    figure = go.Figure()
    for wrapper, group in frame.groupby("wrapper", sort=False):
        figure.add_bar(
            x=chart_text(group["model"]),
            y=group["win_rate"],
            name=chart_text(wrapper),
            error_y=_errors(group, "win_rate"),
        )
    figure.add_hline(y=0.5, line_dash="dot", line_color="gray")
    figure.update_layout(
        title=f"{aspect.capitalize()} win rate against the other models (95% CI)",
        yaxis={"range": [0, 1], "title": "win rate"},
        barmode="group",
        legend_title="wrapper",
    )
    return figure


def ratings_chart(summary: EvalSummary) -> go.Figure:
    figure = go.Figure()
    for aspect, group in summary.ratings.groupby("aspect", sort=True):
        figure.add_bar(
            x=chart_text(group["model"]), y=group["rating"], name=chart_text(aspect), error_y=_errors(group, "rating")
        )
    figure.add_hline(y=1000, line_dash="dot", line_color="gray")
    figure.update_layout(title="Bradley-Terry ratings, Elo scale (95% CI)", yaxis_title="rating", barmode="group")
    return figure


WRAPPER_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")


def refusal_chart(summary: EvalSummary) -> go.Figure:
    """Refusal on harmful prompts against over-refusal on benign ones: the helpful-harmless trade-off.
    Up is safer, left is more helpful.

    A point's model is its colour and its wrapper its shape, named in the legend below the chart, rather than text
    beside the point: models that score alike share a point (a weak model refuses nothing, under every wrapper),
    and their labels would print over each other and past the plot's edge at 0 and 1."""
    frame = summary.refusals
    wide = frame.pivot_table(index=["model", "wrapper"], columns="label", values="refusal_rate").reset_index()
    for label in ("harmful", "benign"):
        if label not in wide:
            wide[label] = float("nan")
    colours = pio.templates[REPORT_TEMPLATE].layout.colorway
    models = list(dict.fromkeys(wide["model"]))
    wrappers = list(dict.fromkeys(wide["wrapper"]))
    figure = go.Figure()
    for row in wide.itertuples():
        figure.add_scatter(
            x=[row.benign],
            y=[row.harmful],
            mode="markers",
            name=chart_text(f"{row.model} · {row.wrapper}"),
            marker={
                "size": 13,
                "color": colours[models.index(row.model) % len(colours)],
                "symbol": WRAPPER_SYMBOLS[wrappers.index(row.wrapper) % len(WRAPPER_SYMBOLS)],
                "line": {"width": 1, "color": "white"},
            },
            cliponaxis=False,  # a point at 0 or 1 is drawn whole
            hovertemplate="over-refusal %{x:.2f}<br>refusal %{y:.2f}",
        )
    figure.update_layout(
        title={
            "text": "Refusal against over-refusal<br><sup>up: refuses more harmful prompts; left: refuses fewer "
            "benign ones</sup>"
        },
        xaxis={"range": [-0.05, 1.05], "title": "over-refusal rate (benign prompts)"},
        yaxis={"range": [-0.05, 1.05], "title": "refusal rate (harmful prompts)"},
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
        margin={"t": 80, "b": 40},
    )
    return figure


def frontier_chart(points: pd.DataFrame) -> go.Figure:
    """The recipe's frontier: each checkpoint's refusal rate on harmful prompts (up is safer) against its rate on
    benign ones (left is more helpful), one point per iteration, a line per arm and stage (CAI SFT, CAI RL, SFT
    baseline, RLHF; the base model once) through its iterations, with 95% intervals on both axes. `points` is
    `recipe.frontier`'s table."""
    figure = go.Figure()
    for label, group in points.sort_values("iteration").groupby("label", sort=False):
        figure.add_scatter(
            x=group["over_refusal"],
            y=group["refusal"],
            mode="lines+markers+text" if len(group) > 1 else "markers+text",
            name=chart_text(label),
            text=[f"i{i}" if i else "" for i in group["iteration"]],
            textposition="top center",
            error_x=_errors(group, "over_refusal", "over_refusal_low", "over_refusal_high"),
            error_y=_errors(group, "refusal", "refusal_low", "refusal_high"),
            cliponaxis=False,
            customdata=group[["over_refusal_n", "refusal_n"]],
            hovertemplate="over-refusal %{x:.2f} (n=%{customdata[0]})<br>refusal %{y:.2f} (n=%{customdata[1]})",
        )
    sets = chart_text(", ".join(filter(None, dict.fromkeys(points["sets"]))))
    figure.update_layout(
        title={
            "text": "Harmlessness against over-refusal, per stage and arm (95% intervals)<br><sup>up: refuses more "
            f"harmful prompts; left: refuses fewer benign ones{'; sets: ' + sets if sets else ''}</sup>"
        },
        xaxis={"range": [-0.05, 1.05], "title": "over-refusal rate (benign prompts)"},
        yaxis={"range": [-0.05, 1.05], "title": "refusal rate (harmful prompts)"},
        legend_title="stage and arm",
    )
    return figure


def principle_chart(summary: EvalSummary) -> go.Figure:
    frame = summary.principles.sort_values("p_better")
    figure = go.Figure(
        go.Bar(
            x=frame["p_better"],
            y=chart_text(frame["principle_id"]),
            orientation="h",
            error_x=_errors(frame, "p_better"),
            text=frame["n"].map(lambda n: f"n={n}"),
        )
    )
    figure.add_vline(x=0.5, line_dash="dot", line_color="gray")
    figure.update_layout(
        title="Per principle: P(revision less harmful than the answer before it), as judged",
        xaxis={"range": [0, 1], "title": "P(revision better)"},
    )
    return figure


def round_chart(summary: EvalSummary) -> go.Figure:
    frame = summary.rounds
    figure = go.Figure(
        go.Scatter(
            x=frame["round"],
            y=frame["p_better_than_initial"],
            mode="lines+markers",
            error_y=_errors(frame, "p_better_than_initial"),
        )
    )
    figure.add_hline(y=0.5, line_dash="dot", line_color="gray")
    figure.update_layout(
        title="Harmlessness by revision round: P(better than the initial answer), as judged",
        xaxis={"title": "round", "dtick": 1},
        yaxis={"range": [0, 1], "title": "P(better)"},
    )
    return figure


def charts(summary: EvalSummary) -> dict[str, go.Figure]:
    """Every chart the summary has data for, by name, in reading order."""
    out: dict[str, go.Figure] = {}
    if not summary.win_rates.empty:
        for aspect in sorted(summary.win_rates["aspect"].unique()):
            out[f"win_rate_{aspect}"] = win_rate_chart(summary, aspect)
        out["ratings"] = ratings_chart(summary)
    if not summary.refusals.empty:
        out["refusals"] = refusal_chart(summary)
    if not summary.principles.empty:
        out["principles"] = principle_chart(summary)
    if not summary.rounds.empty:
        out["rounds"] = round_chart(summary)
    return out


def report_html(summary: EvalSummary) -> str:
    """One self-contained HTML file: the runs' settings, every chart, and the tables behind them. Works offline;
    the template escapes all text from the data."""
    settings = [
        (run_id, key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
        for run_id, config in summary.settings.items()
        for key, value in config.items()
    ]
    return render_report(
        "eval_report.html.j2",
        "CAI evaluation report",
        runs=[run for run in (summary.run_id, summary.rounds_run_id) if run],
        caveats=summary.caveats(),
        settings=settings,
        charts=[(figure, summary.grader_notes().get(name)) for name, figure in charts(summary).items()],
        tables=summary.tables(),
    )
