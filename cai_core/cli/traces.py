"""`cai traces`: list SL-CAI traces with the Traces page's filters, and print one trace round by round."""

from __future__ import annotations

from dataclasses import replace

from ..records import CRITIQUE_VERDICTS, REVISION_VERDICTS
from ..step_flags import FLAGS, flagged_traces, flags_by_trace
from ..store import Store, TraceFilter
from ..workspace import Workspace


def one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_traces_list(args, ws: Workspace) -> int:
    where = TraceFilter(
        run_id=args.run_id,
        constitution_version=args.constitution_version,
        principle_id=args.principle,
        model=args.model,
        text=args.text,
        verdict=args.verdict,
    )
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        if args.flag:
            where = replace(where, trace_ids=flagged_traces(store, args.flag, where))
        total = store.count_traces(where)
        rows = store.trace_page(where, limit=args.limit, offset=args.offset)
        flags = flags_by_trace(store, TraceFilter(trace_ids=tuple(rows["trace_id"]))) if len(rows) else {}
    print(f"{total} traces match; {len(rows)} shown, newest first")
    for row in rows.itertuples():
        found = sorted({flag for step in flags.get(row.trace_id, {}).values() for flag in step}, key=FLAGS.index)
        print(
            f"{row.trace_id:<32} {int(row.rounds or 0)} rounds  {','.join(found) or '-':<18} {one_line(row.prompt, 60)}"
        )
    return 0


def cmd_traces_show(args, ws: Workspace) -> int:
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        trace, steps = store.trace(args.trace_id)
        flags = flags_by_trace(store, TraceFilter(trace_ids=(trace.trace_id,))).get(trace.trace_id, {})
        verdicts = store.verdicts(trace.trace_id)
    print(f"trace {trace.trace_id} · run {trace.run_id} · {trace.model} · constitution {trace.constitution_version}")
    print(f"\nPROMPT\n{trace.prompt}")
    for step in steps:
        flagged = f"  [flagged: {', '.join(flags[step.round])}]" if flags.get(step.round) else ""
        if step.round == 0:
            print(f"\nANSWER{flagged}\n{step.response}")
            continue
        print(f"\nCRITIQUE {step.round} ({step.principle_id})\n{step.critique or ''}")
        print(f"\nREVISION {step.round}{flagged}\n{step.response}")
        for v in verdicts:
            if v.round == step.round:
                judged = f"revision {v.revision_verdict or '-'}, critique {v.critique_verdict or '-'}"
                print(f"  verdict by {v.annotator}: {judged}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("traces", help="List SL-CAI traces by run, principle, text, flag or verdict; show one.")
    verbs = p.add_subparsers(dest="verb", required=True)
    q = verbs.add_parser("list", help="Traces that match every filter given, newest first.")
    q.add_argument("--run-id")
    q.add_argument("--constitution-version")
    q.add_argument("--principle", help="Traces with a round critiqued under this principle id.")
    q.add_argument(
        "--model", help="Traces answered by the model of this name (the model name the traces recorded, not a spec)."
    )
    q.add_argument("--text", help="Words in the prompt, an answer or a critique.")
    q.add_argument(
        "--flag",
        action="append",
        choices=FLAGS,
        help="Traces with a step flagged so (repeat for any of several): empty, truncated, repetition, echo "
        "(the revision repeats the critique or the revision request), unchanged (identical to the answer before).",
    )
    q.add_argument(
        "--verdict",
        choices=REVISION_VERDICTS + CRITIQUE_VERDICTS,
        help="Traces where someone judged a revision better/same/worse or a critique valid/invalid.",
    )
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--offset", type=int, default=0)
    q.set_defaults(func=cmd_traces_list)
    q = verbs.add_parser("show", help="One trace round by round, with its flags and verdicts.")
    q.add_argument("trace_id")
    q.set_defaults(func=cmd_traces_show)
