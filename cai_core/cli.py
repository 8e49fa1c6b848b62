"""The `cai` command: a thin door onto cai_core. Every subcommand is a few calls into the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

from .backends import DTYPES, BackendError, ensure_default_model
from .constitution import (
    ConstitutionError,
    diff_constitutions,
    load_constitution,
    parse_constitution,
    save_constitution,
)
from .critique import GenerateConfig, prepare_job, run_generation
from .exports import FORMATS, KINDS, export_rows, write_export
from .jobs import JobFolder, list_job_folders
from .prompts import PromptFileError
from .store import Store, StoreError
from .workspace import PROJECT_ROOT, Workspace

# What the user can fix gets one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConstitutionError, PromptFileError, BackendError, StoreError, OSError, KeyError, ValueError)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per config field, its help from the field's metadata (as TRL's configs do)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        args = typing.get_args(kind)
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), kind)
        choices = typing.get_args(literal) if typing.get_origin(literal) is typing.Literal else None
        base = next((a for a in args if a in (int, float, str)), kind if kind in (int, float, str) else str)
        parser.add_argument(
            flag, type=base, choices=choices, default=default, required=f.default is dataclasses.MISSING, help=help_text
        )


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


# --- constitution ---------------------------------------------------------------------------------


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


# --- generation and jobs --------------------------------------------------------------------------


def cmd_generate(args, ws: Workspace) -> int:
    config = config_from_args(GenerateConfig, args)
    if args.background:
        job = prepare_job(config, ws)
        db = ["--db", str(ws.db_override)] if ws.db_override else []
        job.launch(["--data-dir", str(ws.root), *db, "resume", job.run_id])
        print(f"started {job.run_id} in the background; follow it with `cai jobs`, stop it with `cai cancel`")
        return 0
    return _run_in_foreground(config, ws)


def cmd_resume(args, ws: Workspace) -> int:
    job = JobFolder(ws.runs_dir / args.run_id)
    if not (job.path / "run.json").exists():
        raise FileNotFoundError(f"no run {args.run_id!r} under {ws.runs_dir}")
    return _run_in_foreground(GenerateConfig(**job.spec["config"]), ws)


def _run_in_foreground(config: GenerateConfig, ws: Workspace) -> int:
    from tqdm import tqdm

    bar = tqdm(unit="step", desc="SL-CAI", dynamic_ncols=True)

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    job = run_generation(config, ws, on_progress=on_progress)
    bar.close()
    progress = job.progress()
    print(f"{job.run_id}: {progress.status}, {progress.done}/{progress.total} steps; records in {job.path}")
    _ingest_if_free(ws)
    return 0 if progress.status == "done" else 1


def _ingest_if_free(ws: Workspace) -> None:
    try:
        with Store.open(ws, wait_seconds=2) as store:
            added = store.ingest(ws.runs_dir)
        print(f"ingested {added} new records into {ws.db_path}")
    except StoreError as exc:
        print(f"{exc}\nthe records stay in the run folder; the app (or `cai ingest`) takes them in later")


def cmd_ingest(args, ws: Workspace) -> int:
    with Store.open(ws) as store:
        added = store.ingest(ws.runs_dir)
        counts = store.counts()
    print(f"ingested {added} new records; the store holds {counts['traces']} traces, {counts['trace_steps']} steps")
    return 0


def cmd_jobs(args, ws: Workspace) -> int:
    jobs = list_job_folders(ws.runs_dir)
    if not jobs:
        print(f"no runs under {ws.runs_dir}")
    for job in jobs:
        p = job.progress()
        print(f"{job.run_id:<24} {job.spec['kind']:<10} {p.status:<10} {p.done:>6}/{p.total:<6} {p.message}")
    return 0


def cmd_cancel(args, ws: Workspace) -> int:
    job = JobFolder(ws.runs_dir / args.run_id)
    if not job.path.exists():
        raise FileNotFoundError(f"no run {args.run_id!r} under {ws.runs_dir}")
    job.request_cancel()
    print(f"asked {args.run_id} to stop after its current batch")
    return 0


# --- export, app, setup, bench ---------------------------------------------------------------------


def cmd_export(args, ws: Workspace) -> int:
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        rows = export_rows(
            store,
            args.kind,
            constitution_version=args.constitution_version,
            max_round=args.max_round,
            run_id=args.run_id,
        )
    if rows.empty:
        print("nothing to export: no traces match (run `cai generate` first, or loosen the filters)")
        return 1
    suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[args.format]
    out = Path(args.out) if args.out else ws.exports_dir / f"{args.kind}{suffix}"
    write_export(rows, out, args.format)
    print(f"wrote {len(rows)} {args.kind} rows to {out}")
    return 0


def cmd_app(args, ws: Workspace) -> int:
    env = {**os.environ, "CAI_DATA_DIR": str(ws.root)}
    if ws.db_override:
        env["CAI_DB"] = str(ws.db_override)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PROJECT_ROOT / "app.py"),
        "--server.port",
        str(args.port),
        "--server.headless",
        str(args.headless).lower(),
        "--browser.gatherUsageStats",
        "false",
    ]
    return subprocess.call(command, env=env)


def cmd_setup(args, ws: Workspace) -> int:
    ensure_default_model(ws.models_dir)
    with Store.open(ws) as store:
        print(f"database ready at {ws.db_path} (schema version {store.schema_version})")
    return 0


def cmd_bench_generate(args, ws: Workspace) -> int:
    from .bench import bench_generate

    print(
        json.dumps(
            bench_generate(
                args.model,
                ws,
                prompts=args.prompts,
                rounds=args.rounds,
                new_tokens=args.new_tokens,
                few_shot=args.few_shot,
            ),
            indent=1,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description=__doc__)
    parser.add_argument(
        "--data-dir", help="Data folder (database, runs, models). Default: the project's data/ or $CAI_DATA_DIR."
    )
    parser.add_argument("--db", help="Database file. Default: DATA_DIR/cai.duckdb or $CAI_DB.")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("generate", help="Run SL-CAI: answers, then critique→revision rounds.")
    add_dataclass_arguments(p, GenerateConfig)
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("resume", help="Continue a run from where it stopped.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("jobs", help="List runs and their progress.")
    p.set_defaults(func=cmd_jobs)
    p = sub.add_parser("cancel", help="Ask a running job to stop after its current batch.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("ingest", help="Take finished jobs' records into the database.")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("export", help="Write SFT data or revision pairs in TRL's formats.")
    p.add_argument("--kind", choices=KINDS, default="sft")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--out", help="Output file (a folder for --format hf). Default: DATA_DIR/exports/KIND.")
    p.add_argument("--constitution-version")
    p.add_argument("--max-round", type=int, help="Use the revision of this round at most.")
    p.add_argument("--run-id")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("app", help="Start the browser app (Streamlit).")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_app)
    p = sub.add_parser("setup", help="Convert the default model and create the database.")
    p.set_defaults(func=cmd_setup)

    bench = sub.add_parser("bench", help="Benchmarks that print a ratio against a baseline run alongside.")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    p = bench_sub.add_parser("generate", help="Sequential reference loop versus the batched pipeline.")
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--few-shot", action="store_true", help="Include the constitution's worked examples.")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="Precision of the local model, on both sides.")
    p.set_defaults(func=cmd_bench_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Offline by default: a hub lookup that cannot succeed otherwise retries for most of a minute.
    # HF_HUB_OFFLINE=0 lets hub ids download where the hub is reachable.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    ws = Workspace.from_env(args.data_dir, args.db)
    try:
        return args.func(args, ws)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    sys.exit(main())
