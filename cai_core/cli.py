"""The `cai` command: a thin door onto cai_core. Every subcommand is a few calls into the library."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
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
from .evaluation import EvalConfig, RoundsConfig, prepare_eval_job, prepare_rounds_job, run_evaluation, run_rounds
from .exports import FORMATS, KINDS, export_rows, write_export
from .feedback import LabelConfig, prepare_label_job, run_labelling
from .jobs import JobBusy, JobFolder, list_job_folders
from .pairs import SampleConfig, prepare_sample_job, run_sampling
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
        if typing.get_origin(kind) is list:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else default
            required = default is None and f.default_factory is dataclasses.MISSING
            parser.add_argument(flag, nargs="+", default=default, required=required, help=help_text)
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


@dataclass(frozen=True)
class JobKind:
    """What the CLI needs to start, run and resume one kind of (non-training) job."""

    config: type
    prepare: Callable
    run: Callable
    desc: str  # the progress bar's name
    unit: str  # what it counts


JOB_KINDS = {
    "generate": JobKind(GenerateConfig, prepare_job, run_generation, "SL-CAI", "step"),
    "pairs": JobKind(SampleConfig, prepare_sample_job, run_sampling, "sampling", "prompt"),
    "label": JobKind(LabelConfig, prepare_label_job, run_labelling, "AI labels", "label"),
    "eval": JobKind(EvalConfig, prepare_eval_job, run_evaluation, "evaluation", "step"),
    "eval-rounds": JobKind(RoundsConfig, prepare_rounds_job, run_rounds, "rounds", "comparison"),
}


def _start_job(kind: str, args, ws: Workspace) -> tuple[int, JobFolder]:
    """Prepare a job from the command's flags (user errors surface here, before a progress bar is drawn), then
    start it detached with --background or run it to the end here."""
    config = config_from_args(JOB_KINDS[kind].config, args)
    job = JOB_KINDS[kind].prepare(config, ws)
    if args.background:
        return _launch(job, ws), job
    return _run_job(kind, dataclasses.replace(config, run_id=job.run_id), ws), job


def _run_job(kind: str, config, ws: Workspace) -> int:
    from tqdm import tqdm

    unit = JOB_KINDS[kind].unit
    bar = tqdm(unit=unit, desc=JOB_KINDS[kind].desc, dynamic_ncols=True)

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        job = JOB_KINDS[kind].run(config, ws, on_progress=on_progress)
    except JobBusy as busy:
        bar.close()
        return _follow(JOB_KINDS[kind].prepare(config, ws), busy)
    bar.close()
    progress = job.progress()
    print(f"{job.run_id}: {progress.status}, {progress.done}/{progress.total} {unit}s; records in {job.path}")
    _ingest_if_free(ws)
    return 0 if progress.status == "done" else 1


def _follow(job: JobFolder, busy: JobBusy) -> int:
    """Another process is doing this job's work (a second start, a second `cai resume`): show its progress
    until it ends instead of doing the work twice."""
    print(f"{busy}; following it (Ctrl-C stops following, not the run)", flush=True)
    while (progress := job.progress()).status in ("pending", "running"):
        time.sleep(1)
    print(f"{job.run_id}: {progress.status}, {progress.summary()}")
    return 0 if progress.status == "done" else 1


def _launch(job: JobFolder, ws: Workspace) -> int:
    job.resume_in_background(ws)
    print(f"started {job.run_id} in the background; follow it with `cai jobs`, stop it with `cai cancel`")
    return 0


def cmd_generate(args, ws: Workspace) -> int:
    return _start_job("generate", args, ws)[0]


def cmd_resume(args, ws: Workspace) -> int:
    job = JobFolder(ws.runs_dir / args.run_id)
    if not (job.path / "run.json").exists():
        raise FileNotFoundError(f"no run {args.run_id!r} under {ws.runs_dir}")
    kind = job.spec["kind"]
    if kind.startswith("train-"):
        return _train_in_foreground(job, ws)
    return _run_job(kind, JOB_KINDS[kind].config(**job.spec["config"]), ws)


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
        print(f"{job.run_id:<24} {job.spec['kind']:<11} {p.status:<10} {p.summary()}  {p.message}".rstrip())
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
            min_confidence=args.min_confidence,
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


# --- RLAIF: pairs, AI labels, human labels, agreement ----------------------------------------------


def cmd_pairs_sample(args, ws: Workspace) -> int:
    return _start_job("pairs", args, ws)[0]


def cmd_pairs_sl_cai(args, ws: Workspace) -> int:
    from .pairs import sl_cai_pairs

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        pairs = sl_cai_pairs(
            store, run_id=args.run_id, constitution_version=args.constitution_version, max_round=args.max_round
        )
        added = store.add_pairs(pairs)
    print(f"{len(pairs)} first-answer-versus-revision pairs, {added} new (an unchanged revision gives none)")
    return 0


def cmd_pairs_import(args, ws: Workspace) -> int:
    from .pairs import read_pairs_file

    found = read_pairs_file(args.file, skip_bad_lines=args.skip_bad_lines)
    with Store.open(ws) as store:
        added = store.add_pairs(found.pairs)
    print(f"read {len(found.pairs)} pairs from {args.file}, {added} new; skipped {len(found.problems)} bad line(s)")
    return 0


def cmd_label(args, ws: Workspace) -> int:
    return _start_job("label", args, ws)[0]


def cmd_import_labels(args, ws: Workspace) -> int:
    from .pairs import looks_like_hh_rlhf, read_hh_rlhf, read_labels_file

    hh = args.format == "hh-rlhf" or (args.format == "auto" and looks_like_hh_rlhf(args.file))
    if hh:
        found = read_hh_rlhf(args.file, limit=args.limit, skip_bad_lines=args.skip_bad_lines)
    else:
        found = read_labels_file(args.file, annotator=args.annotator, skip_bad_lines=args.skip_bad_lines)
    with Store.open(ws) as store:
        added = store.add_pairs(found.pairs)
        labels = store.import_human_labels(found.labels)
    if hh:
        print(f"read {len(found.pairs)} hh-rlhf pairs ({added} new) and their crowdworker labels")
        print(f"{found.ties} pair(s) had identical responses and are labelled tie")
    print(f"imported {labels} human label(s); skipped {len(found.problems)} bad line(s)")
    return 0


def cmd_agreement(args, ws: Workspace) -> int:
    import pandas as pd

    from .agreement import dashboard

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        board = dashboard(
            store,
            run_ids=args.run_id,
            principles=args.principle,
            judge_models=args.judge_model,
            constitution_versions=args.constitution_version,
            tie_band=args.tie_band,
            bins=args.bins,
        )
    table = getattr(board, f"by_{args.by}")
    if table.empty:
        print("no AI labels match: run `cai label` first, or loosen the filters")
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.3f}".format):
        print(f"AI versus human agreement by {args.by} (tie band ±{args.tie_band}; NaN: nothing to compare)")
        print(table.to_string(index=False))
        alpha = board.alpha
        shown = "undefined" if alpha.alpha is None else f"{alpha.alpha:.3f}"
        print(f"\ninter-human Krippendorff's alpha (nominal): {shown} over {alpha.pairs} pairs with 2+ labels")
        print("\nconfusion (rows: human, columns: AI, with ties)")
        print(board.confusion.to_string())
        ece = "undefined" if board.reliability.ece is None else f"{board.reliability.ece:.3f}"
        print(f"\nreliability of P(a better) against human a/b labels: ECE {ece} over {board.reliability.n} labels")
        print(board.reliability.bins.to_string(index=False))
        if args.disagreements and not board.disagreements.empty:
            print(f"\nmost confident disagreements (up to {args.disagreements})")
            columns = ["run_id", "pair_id", "annotator", "human", "ai", "p_a", "p_order1", "p_order2"]
            print(board.disagreements[columns].head(args.disagreements).to_string(index=False))
    return 0


def _add_rlaif_parsers(sub) -> None:
    pairs = sub.add_parser("pairs", help="Make response pairs to compare: sample K answers, SL-CAI, or a file.")
    pairs_sub = pairs.add_subparsers(dest="action", required=True)
    p = pairs_sub.add_parser("sample", help="Sample K answers per prompt with any model and pair them.")
    add_dataclass_arguments(p, SampleConfig)
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=cmd_pairs_sample)
    p = pairs_sub.add_parser("sl-cai", help="Pair each SL-CAI trace's first answer with its final revision.")
    p.add_argument("--run-id", help="Only traces of this generation run.")
    p.add_argument("--constitution-version")
    p.add_argument("--max-round", type=int, help="Use the revision of this round at most.")
    p.set_defaults(func=cmd_pairs_sl_cai)
    p = pairs_sub.add_parser("import", help="Read pairs from .jsonl/.csv with prompt, response_a, response_b.")
    p.add_argument("file")
    p.add_argument("--skip-bad-lines", action="store_true", help="Skip bad lines instead of stopping.")
    p.set_defaults(func=cmd_pairs_import)

    p = sub.add_parser("label", help="AI-label pairs: soft labels from option log-probabilities, both orders.")
    add_dataclass_arguments(p, LabelConfig)
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("import-labels", help="Import human labels: hh-rlhf files, or pair_id,label,annotator.")
    p.add_argument("file", help=".jsonl, .jsonl.gz or .csv")
    p.add_argument("--format", choices=("auto", "hh-rlhf", "labels"), default="auto")
    p.add_argument("--limit", type=int, help="hh-rlhf: read only the first N pairs.")
    p.add_argument("--annotator", help="labels: the annotator of every line, when the file has no column.")
    p.add_argument("--skip-bad-lines", action="store_true", help="Skip bad lines instead of stopping.")
    p.set_defaults(func=cmd_import_labels)

    p = sub.add_parser("agreement", help="Print AI-versus-human agreement, kappa, alpha, position bias, ECE.")
    p.add_argument("--by", choices=("run", "model", "version", "principle"), default="run")
    for flag, what in (
        ("--run-id", "label run"),
        ("--principle", "principle"),
        ("--judge-model", "judge model"),
        ("--constitution-version", "constitution version"),
    ):
        p.add_argument(flag, action="append", help=f"Only labels of this {what} (repeat for several).")
    p.add_argument("--tie-band", type=float, default=0.05, help="The AI says tie when |P - 0.5| <= this.")
    p.add_argument("--bins", type=int, default=10, help="Reliability diagram bins.")
    p.add_argument("--disagreements", type=int, default=10, help="List this many disagreements (0: none).")
    p.set_defaults(func=cmd_agreement)


# --- evaluation -----------------------------------------------------------------------------------


def cmd_eval_run(args, ws: Workspace) -> int:
    code, job = _start_job("eval", args, ws)
    return code if args.background or code else _print_eval(ws, job.run_id, None)


def cmd_eval_rounds(args, ws: Workspace) -> int:
    code, job = _start_job("eval-rounds", args, ws)
    return code if args.background or code else _print_eval(ws, None, job.run_id)


def cmd_eval_show(args, ws: Workspace) -> int:
    return _print_eval(ws, args.run_id, args.rounds_run_id)


def _print_eval(ws: Workspace, run_id: str | None, rounds_run_id: str | None) -> int:
    from .eval_report import summarize

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        summary = summarize(store, run_id, rounds_run_id)
    tables = summary.tables()
    if not tables:
        raise ValueError("nothing to show: the run has no stored answers or judgments yet")
    for title, frame in tables:
        print(f"\n{title}\n{frame.round(3).to_string(index=False)}")
    return 0


def cmd_eval_report(args, ws: Workspace) -> int:
    from .eval_report import report_html, summarize

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        summary = summarize(store, args.run_id, args.rounds_run_id)
    if summary.answers.empty and summary.rounds.empty:
        raise ValueError("nothing to report: the runs have no stored answers or judgments yet")
    out = Path(args.out)
    out.write_text(report_html(summary), encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, one file, opens offline)")
    return 0


def _add_eval_parsers(sub) -> None:
    evaluate = sub.add_parser("eval", help="Compare models on red-team and benign sets; score SL-CAI rounds.")
    eval_sub = evaluate.add_subparsers(dest="action", required=True)
    p = eval_sub.add_parser("run", help="Answer the sets with every model, detect refusals, judge every two.")
    add_dataclass_arguments(p, EvalConfig)
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=cmd_eval_run)
    p = eval_sub.add_parser("rounds", help="Judge each SL-CAI revision against the answer before it and the first.")
    add_dataclass_arguments(p, RoundsConfig)
    p.add_argument("--background", action="store_true", help="Start the job detached and return at once.")
    p.set_defaults(func=cmd_eval_rounds)
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


# --- training -------------------------------------------------------------------------------------


def cmd_train(args, ws: Workspace) -> int:
    from .train import config_class, load_config_file, prepare_train_job
    from .train.harness import config_from_args_given

    cls = config_class(args.kind)
    given = config_from_args_given(cls, args)
    config = load_config_file(cls, args.config, given) if args.config else cls(**given)
    job = prepare_train_job(config, ws)
    if args.background or config.accelerate_config:
        from .train import launch_train_job

        launch_train_job(job, ws)
        how = "through `accelerate launch`" if config.accelerate_config else "in the background"
        print(f"started {job.run_id} {how}; follow it with `cai train list`, stop it with `cai cancel {job.run_id}`")
        return 0
    return _train_in_foreground(job, ws)


def _train_in_foreground(job: JobFolder, ws: Workspace) -> int:
    from .train import run_train_job

    # Under `accelerate launch` every rank runs this command; the main one holds the run's lock for them all.
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        with job.exclusive() if main_rank else contextlib.nullcontext():
            run_train_job(job, ws)
    except JobBusy as busy:
        return _follow(job, busy)
    progress = job.progress()
    print(f"{job.run_id}: {progress.status}, step {progress.done}/{progress.total}; {progress.message}")
    _ingest_if_free(ws)
    return 0 if progress.status == "done" else 1


def cmd_train_resume(args, ws: Workspace) -> int:
    job = JobFolder(ws.runs_dir / args.run_id)
    if not (job.path / "run.json").exists() or not job.spec["kind"].startswith("train-"):
        raise FileNotFoundError(f"no training run {args.run_id!r} under {ws.runs_dir}")
    return _train_in_foreground(job, ws)


def cmd_train_list(args, ws: Workspace) -> int:
    jobs = [j for j in list_job_folders(ws.runs_dir) if j.spec["kind"].startswith("train-")]
    if not jobs:
        print(f"no training runs under {ws.runs_dir}")
    for job in jobs:
        p = job.progress()
        final = job.path / "final"
        where = str(final) if (final / "config.json").exists() else ""
        print(f"{job.run_id:<18} {job.spec['kind']:<11} {p.status:<10} {p.done:>6}/{p.total:<6} {where or p.message}")
    return 0


def _add_train_parsers(sub) -> None:
    from .train import KINDS, config_class

    train = sub.add_parser("train", help="Train: SL-CAI SFT, reward model, PPO, DPO, GRPO, RLOO; list runs.")
    train_sub = train.add_subparsers(dest="action", required=True)
    helps = {
        "sft": "Supervised fine-tuning on the SL-CAI revisions (TRL SFTTrainer).",
        "rm": "A reward model on AI preference labels (TRL RewardTrainer).",
        "ppo": "RL-CAI: PPO against a reward model, with a KL penalty to the reference.",
        "dpo": "Direct RLAIF: DPO on the AI preference labels (TRL DPOTrainer).",
        "grpo": "GRPO against a reward model (TRL GRPOTrainer).",
        "rloo": "RLOO against a reward model (TRL RLOOTrainer).",
    }
    for kind in KINDS:
        p = train_sub.add_parser(kind, help=helps[kind])
        p.add_argument("--config", help="A YAML file of the config's fields; flags given here override it.")
        p.add_argument("--background", action="store_true", help="Start the run detached and return at once.")
        cls = config_class(kind)
        add_dataclass_arguments(p, cls)
        # flags the user did not give stay absent, so that a --config file's values are not overwritten
        names = {f.name for f in dataclasses.fields(cls)}
        for action in p._actions:
            if action.dest in names:
                action.default = argparse.SUPPRESS
        p.set_defaults(func=cmd_train, kind=kind)
    p = train_sub.add_parser("resume", help="Continue a training run from its last checkpoint.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_train_resume)
    p = train_sub.add_parser("list", help="List training runs: status, step, final model folder or reason.")
    p.set_defaults(func=cmd_train_list)


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
    p.add_argument("--run-id", help="The run the rows come from (for preferences: a label run, or `human`).")
    p.add_argument(
        "--min-confidence", type=float, default=0.0, help="Preferences only: keep pairs with |2 P - 1| at least this."
    )
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
    _add_rlaif_parsers(sub)
    _add_train_parsers(sub)
    _add_eval_parsers(sub)
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
