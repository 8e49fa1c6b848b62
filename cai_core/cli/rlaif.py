"""RLAIF from the command line: `cai pairs sample|sl-cai|import`, `cai label`, `cai import-labels`, `cai agreement`."""

from __future__ import annotations

from ..pairs import LABEL_FORMATS
from ..store import Store
from ..workspace import Workspace
from .jobs import add_job_parser, start_job


def cmd_pairs_sample(args, ws: Workspace) -> int:
    return start_job("pairs", args, ws)[0]


def cmd_pairs_sl_cai(args, ws: Workspace) -> int:
    from ..pairs import sl_cai_pairs

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        pairs = sl_cai_pairs(
            store, run_id=args.run_id, constitution_version=args.constitution_version, max_round=args.max_round
        )
        added = store.add_pairs(pairs)
    print(f"{len(pairs)} first-answer-versus-revision pairs, {added} new (an unchanged revision gives none)")
    return 0


def cmd_pairs_import(args, ws: Workspace) -> int:
    from ..pairs import read_pairs_file

    found = read_pairs_file(args.file, skip_bad_lines=args.skip_bad_lines)
    with Store.open(ws) as store:
        added = store.add_pairs(found.pairs)
    print(f"read {len(found.pairs)} pairs from {args.file}, {added} new; skipped {len(found.problems)} bad line(s)")
    return 0


def cmd_label(args, ws: Workspace) -> int:
    return start_job("label", args, ws)[0]


def cmd_import_labels(args, ws: Workspace) -> int:
    from ..pairs import import_labels

    with Store.open(ws) as store:
        result = import_labels(
            store,
            args.file,
            file_format=args.format,
            limit=args.limit,
            annotator=args.annotator,
            skip_bad_lines=args.skip_bad_lines,
        )
    if result.hh_rlhf:
        print(f"read {len(result.found.pairs)} hh-rlhf pairs ({result.pairs_added} new) and their crowdworker labels")
        print(f"{result.found.ties} pair(s) had identical responses and are labelled tie")
    print(f"imported {result.labels_added} human label(s); skipped {len(result.found.problems)} bad line(s)")
    return 0


def cmd_agreement(args, ws: Workspace) -> int:
    import pandas as pd

    from ..agreement import dashboard

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
        raise ValueError("no AI labels match: run `cai label` first, or loosen the filters")
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.3f}".format):
        print(board.verdict.headline())
        print(pd.DataFrame(board.verdict.table()).drop(columns="threshold from").to_string(index=False))
        for advice in board.verdict.advice:
            print(f"- {advice}")
        print(f"\nAI versus human agreement by {args.by} (tie band ±{args.tie_band}; NaN: nothing to compare)")
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


def add_parsers(sub) -> None:
    pairs = sub.add_parser("pairs", help="Make response pairs to compare: sample K answers, SL-CAI, or a file.")
    pairs_sub = pairs.add_subparsers(dest="action", required=True)
    add_job_parser(
        pairs_sub, "sample", "pairs", "Sample K answers per prompt with any model and pair them.", cmd_pairs_sample
    )
    p = pairs_sub.add_parser("sl-cai", help="Pair each SL-CAI trace's first answer with its final revision.")
    p.add_argument("--run-id", help="Only traces of this generation run.")
    p.add_argument("--constitution-version")
    p.add_argument("--max-round", type=int, help="Use the revision of this round at most.")
    p.set_defaults(func=cmd_pairs_sl_cai)
    p = pairs_sub.add_parser("import", help="Read pairs from .jsonl/.csv with prompt, response_a, response_b.")
    p.add_argument("file")
    p.add_argument("--skip-bad-lines", action="store_true", help="Skip bad lines instead of stopping.")
    p.set_defaults(func=cmd_pairs_import)

    add_job_parser(
        sub, "label", "label", "AI-label pairs: soft labels from option log-probabilities, both orders.", cmd_label
    )

    p = sub.add_parser("import-labels", help="Import human labels: hh-rlhf files, or pair_id,label,annotator.")
    p.add_argument("file", help=".jsonl, .jsonl.gz or .csv")
    p.add_argument("--format", choices=LABEL_FORMATS, default="auto")
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
