"""`cai constitution validate|show|diff|save|history|restore|ab|ab-show`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..ab import ABConfig
from ..ab_result import ab_prompt, ab_result
from ..constitution import diff_constitutions, load_constitution, parse_constitution, save_constitution
from ..store import Store
from ..workspace import Workspace
from .flags import add_dataclass_arguments


def cmd_constitution_validate(args, ws: Workspace) -> int:
    for path in args.files:
        c = load_constitution(path)
        print(
            f"{path}: ok: {c.name!r}, {len(c.principles)} principles "
            f"({len(c.enabled_principles)} enabled), version {c.version}"
        )
    return 0


def _constitution_at(ref: str, ws: Workspace):
    """A file path, or a version hash kept in the store's history."""
    if Path(ref).exists():
        return load_constitution(ref)
    with Store.open(ws) as store:
        return parse_constitution(store.constitution_text(ref), f"version {ref}")


def cmd_constitution_show(args, ws: Workspace) -> int:
    c = _constitution_at(args.ref, ws)
    print(f"# {c.name} (version {c.version})")
    print(c.to_yaml(), end="")
    return 0


def cmd_constitution_diff(args, ws: Workspace) -> int:
    old, new = _constitution_at(args.old, ws), _constitution_at(args.new, ws)
    print(diff_constitutions(old, new, args.old, args.new) or "no differences", end="")
    return 0


def cmd_constitution_save(args, ws: Workspace) -> int:
    """Validate, record the version in the store's history, then write the file."""
    text = sys.stdin.read() if args.source == "-" else Path(args.source).read_text(encoding="utf-8")
    c = parse_constitution(text, args.source)
    with Store.open(ws) as store:
        store.record_constitution(c, args.file, args.note)
        save_constitution(c, args.file)
    print(f"saved {args.file} as version {c.version}")
    return 0


def cmd_constitution_history(args, ws: Workspace) -> int:
    with Store.open(ws) as store:
        history = store.constitution_history(args.file)
    if history.empty:
        print(f"no saves of {args.file} recorded yet")
    for row in history.itertuples():
        print(f"{row.save_id:>4}  {row.version}  {_when(row.saved_at)}  {row.note}")
    return 0


def cmd_constitution_restore(args, ws: Workspace) -> int:
    with Store.open(ws) as store:
        c = parse_constitution(store.constitution_text(args.version), f"version {args.version}")
        store.record_constitution(c, args.file, f"restored {args.version}")
        save_constitution(c, args.file)
    print(f"restored {args.file} to version {c.version}")
    return 0


def cmd_constitution_ab(args, ws: Workspace) -> int:
    """Run an A/B of two constitutions (files or version hashes) here, or detached with --background; then its
    figures."""
    from .jobs import start_job

    code, job = start_job("ab", args, ws)
    if code == 0 and not args.background:
        _print_result(ws, job.run_id)
    return code


def cmd_constitution_ab_show(args, ws: Workspace) -> int:
    if args.prompt:
        found = ab_prompt(ws, args.run_id, args.prompt)
        print(f"# {found.key} ({found.label}, {found.category})\n{found.prompt}")
        for side, steps in found.traces.items():
            print(f"\n## constitution {side.upper()}")
            for step in steps:
                if step["round"]:
                    print(f"-- round {step['round']} · {step['principle_id']}\ncritique: {step['critique']}")
                print(f"{'initial' if step['round'] == 0 else 'revision'}: {step['response']}")
        print()
        print(found.judgments.to_string(index=False) if not found.judgments.empty else "not judged yet")
        return 0
    _print_result(ws, args.run_id)
    return 0


def cmd_constitution_ab_people(args, ws: Workspace) -> int:
    """With --send, put an A/B's judged A vs B pairs on the Annotate page's queue; then print people against its
    judge."""
    from ..ab_people import people_vs_judge, send_to_people

    with Store.open(ws) as store:
        if args.send:
            added = send_to_people(ws, store, args.run_id)
            print(
                f"sent {added} new A vs B pairs to the Annotate page (Disagreement first, contested by {args.run_id})"
            )
        print(people_vs_judge(ws, store, args.run_id))
    return 0


def _print_result(ws: Workspace, run_id: str) -> None:
    result = ab_result(ws, run_id)
    for side in ("a", "b", "judge"):
        print(f"{side:>5}: {result.names[side]} (version {result.versions[side]})")
    sections = {
        "paired win rates (ties count half; 95% bootstrap intervals over prompts; the last row: A's gain over its "
        "initial answer minus B's, prompt by prompt, from -1 to 1)": result.win_rates,
        "per judging principle": result.by_principle,
        "per prompt category": result.by_category,
        "refusals by phrase (benign: over-refusal; Wilson 95% intervals)": result.refusals,
    }
    for title, frame in sections.items():
        print(f"\n{title}")
        print(frame.round(3).to_string(index=False) if not frame.empty else "  (nothing judged yet)")


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def add_parsers(sub) -> None:
    con = sub.add_parser("constitution", help="Validate, show, diff, save, and restore constitutions.")
    con_sub = con.add_subparsers(dest="action", required=True)
    p = con_sub.add_parser("validate", help="Check constitution files against the schema.")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_constitution_validate)
    p = con_sub.add_parser("show", help="Print a constitution (a file, or a version hash from the history).")
    p.add_argument("ref")
    p.set_defaults(func=cmd_constitution_show)
    p = con_sub.add_parser("diff", help="Diff two constitutions (files or version hashes).")
    p.add_argument("old")
    p.add_argument("new")
    p.set_defaults(func=cmd_constitution_diff)
    p = con_sub.add_parser("save", help="Validate SOURCE (a file or - for stdin) and save it to FILE as a new version.")
    p.add_argument("source")
    p.add_argument("file")
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_constitution_save)
    p = con_sub.add_parser("history", help="List the saved versions of a constitution file.")
    p.add_argument("file")
    p.set_defaults(func=cmd_constitution_history)
    p = con_sub.add_parser("restore", help="Write a past version back to FILE (recorded as a new save).")
    p.add_argument("file")
    p.add_argument("version")
    p.set_defaults(func=cmd_constitution_restore)
    p = con_sub.add_parser(
        "ab",
        help="A/B: SL-CAI under two constitutions (files or version hashes) on the same prompts and seeds, judged "
        "by a neutral question or a third constitution; paired win rates, per principle and category, refusals.",
    )
    p.add_argument("constitution_a", help="Constitution A: a file, or a version hash from `cai constitution history`.")
    p.add_argument("constitution_b", help="Constitution B: a file, or a version hash.")
    add_dataclass_arguments(p, ABConfig, skip=("constitution_a", "constitution_b"))
    p.add_argument("--background", action="store_true", help="Start it detached and return at once.")
    p.set_defaults(func=cmd_constitution_ab)
    p = con_sub.add_parser("ab-show", help="An A/B's figures, or with --prompt KEY both traces of one prompt.")
    p.add_argument("run_id")
    p.add_argument("--prompt", help="A prompt key (e.g. red-team/rt-01): both traces and the judgments.")
    p.set_defaults(func=cmd_constitution_ab_show)
    p = con_sub.add_parser(
        "ab-people",
        help="People against an A/B's judge on its A vs B pairs (Cohen's kappa, 95%% interval; A's win rate by "
        "people and by the judge); with --send, first put those pairs on the Annotate page's queue.",
    )
    p.add_argument("run_id")
    p.add_argument("--send", action="store_true", help="Send the judged A vs B pairs to the Annotate page first.")
    p.set_defaults(func=cmd_constitution_ab_people)
