"""`cai eval run|rounds|show|report|audit`: compare models, score SL-CAI rounds, print or write the results, and
send a sample of the graders' verdicts to people."""

from __future__ import annotations

from pathlib import Path

from ..store import Store
from ..workspace import Workspace
from .flags import add_dataclass_arguments
from .jobs import add_job_parser, start_job


def cmd_eval_run(args, ws: Workspace) -> int:
    code, job = start_job("eval", args, ws)
    return code if args.background or code else _print_eval(ws, job.run_id, None)


def cmd_eval_rounds(args, ws: Workspace) -> int:
    code, job = start_job("eval-rounds", args, ws)
    return code if args.background or code else _print_eval(ws, None, job.run_id)


def cmd_eval_inspect(args, ws: Workspace) -> int:
    code, job = start_job("inspect", args, ws)
    if args.background or code:
        return code
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        scores = store.inspect_scores()
    scores = scores[scores.run_id == job.run_id]
    print(scores[["task", "model", "scorer", "metric", "value"]].round(3).to_string(index=False))
    print(f"Inspect log: {scores.log.iloc[0]} (inspect view --log-dir {Path(scores.log.iloc[0]).parent})")
    return 0


def cmd_eval_show(args, ws: Workspace) -> int:
    return _print_eval(ws, args.run_id, args.rounds_run_id)


def _print_eval(ws: Workspace, run_id: str | None, rounds_run_id: str | None) -> int:
    from ..eval_report import summarize

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        summary = summarize(store, run_id, rounds_run_id)
    tables = summary.tables()
    if not tables:
        raise ValueError("nothing to show: the run has no stored answers or judgments yet")
    for title, frame in tables:
        print(f"\n{title}\n{frame.round(3).to_string(index=False)}")
    return 0


def cmd_eval_audit(args, ws: Workspace) -> int:
    from ..eval_report import summarize
    from ..grader_audit import send_sample, sent_text

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        if args.size:
            added = send_sample(store, args.run_id, args.size, args.seed)
            print(f"sent {sent_text(added)} to the Annotate page")
        summary = summarize(store, args.run_id)
    for audit in summary.grader_audits.values():
        print(audit)
    return 0


def cmd_eval_report(args, ws: Workspace) -> int:
    from ..eval_report import report_html, summarize

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        summary = summarize(store, args.run_id, args.rounds_run_id)
    if summary.answers.empty and summary.rounds.empty:
        raise ValueError("nothing to report: the runs have no stored answers or judgments yet")
    out = Path(args.out).resolve()
    out.write_text(report_html(summary), encoding="utf-8")
    print(f"wrote the report to {out} ({out.stat().st_size // 1024} KiB, one file, opens offline)")
    return 0


def add_parsers(sub) -> None:
    evaluate = sub.add_parser("eval", help="Compare models on red-team and benign sets; score SL-CAI rounds.")
    eval_sub = evaluate.add_subparsers(dest="action", required=True)
    add_job_parser(
        eval_sub, "run", "eval", "Answer the sets with every model, detect refusals, judge every two.", cmd_eval_run
    )
    add_job_parser(
        eval_sub,
        "rounds",
        "eval-rounds",
        "Judge each SL-CAI revision against the answer before it and the first.",
        cmd_eval_rounds,
    )
    from ..inspect_eval import InspectConfig

    p = eval_sub.add_parser("inspect", help="Evaluate a model with an Inspect AI task (needs inspect_ai).")
    p.add_argument("task", help=dict(InspectConfig.__dataclass_fields__["task"].metadata)["help"])
    add_dataclass_arguments(p, InspectConfig, skip=("task",))
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=cmd_eval_inspect)
    for name, func, help_text in (
        ("show", cmd_eval_show, "Print an evaluation's tables."),
        ("report", cmd_eval_report, "Write an evaluation's charts and tables to one HTML file."),
    ):
        p = eval_sub.add_parser(name, help=help_text)
        p.add_argument("--run-id", help="A comparison run (cai eval run).")
        p.add_argument("--rounds-run-id", help="A rounds run (cai eval rounds).")
        if name == "report":
            p.add_argument("--out", default="cai-eval-report.html", help="Where to write the report.")
        p.set_defaults(func=func)
    from ..grader_audit import MIN_ANSWERS

    p = eval_sub.add_parser(
        "audit",
        help="Send a seeded sample of a comparison run's refusal and harm verdicts (pairwise and of one answer) to "
        "the Annotate page, and print "
        f"each grader's agreement with people (Cohen's kappa, 95%% interval; unaudited below {MIN_ANSWERS} answers).",
    )
    p.add_argument("--run-id", required=True, help="A comparison run (cai eval run).")
    p.add_argument(
        "--size", type=int, default=0, help="Verdicts of each kind to add to the sample (0: only print the agreement)."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the sample's order: a larger size extends the sample.")
    p.set_defaults(func=cmd_eval_audit)
