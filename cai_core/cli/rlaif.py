"""RLAIF from the command line: `cai pairs sample|sl-cai|import`, `cai label`, `cai import-labels`, `cai agreement`,
`cai calibrate`, `cai gate`."""

from __future__ import annotations

import dataclasses

from ..auth import current_actor
from ..backends import MODEL_SPEC_HELP
from ..label_gate import GateRule
from ..pairs import LABEL_FORMATS
from ..store import Store
from ..workspace import Workspace
from .flags import add_dataclass_arguments, config_from_args
from .jobs import add_job_parser, launch, start_job


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
            importer=current_actor().name,
        )
    if result.hh_rlhf:
        print(f"read {len(result.found.pairs)} hh-rlhf pairs ({result.pairs_added} new) and their crowdworker labels")
        print(f"{result.found.ties} pair(s) had identical responses and are labelled tie")
    print(f"imported {result.labels_added} human label(s); skipped {len(result.found.problems)} bad line(s)")
    if result.labels_kept:
        print(f"kept {result.labels_kept} label(s) already given for the same pair and annotator")
    return 0


def print_calibration_report(report: dict) -> None:
    """A calibration's figures on its held-out human-labelled pairs, one row per stage."""
    import pandas as pd

    from ..judge_calibration import CALIBRATION_STAGES

    print(f"on {report['n_held_out']} held-out human labels (fitted on {report['n_fit']}):")
    frame = pd.DataFrame([{"stage": s, **report[s]} for s in CALIBRATION_STAGES])
    print(frame.to_string(index=False, float_format="{:.3f}".format))


def cmd_calibrate(args, ws: Workspace) -> int:
    from ..jobs import prepare
    from ..judge_audit import CalibrateConfig, calibrate_run

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        if args.list:
            found = store.calibrations()
            if found.empty:
                print("no calibrations yet: `cai calibrate --run-id RUN`")
            for row in found.itertuples():
                print(
                    f"{row.calibration_id}  judge {row.judge_model} · constitution version {row.constitution_version}"
                )
                print_calibration_report(row.report)
            return 0
        if not args.run_id:
            raise ValueError("name the label run to calibrate: --run-id RUN (or --list)")
        if args.background:
            job = prepare("calibrate", CalibrateConfig(label_run=args.run_id, model=args.model), ws, store=store)
            return launch(job, ws)
        calibration_id, calibration = calibrate_run(store, ws, args.run_id, model=args.model)
    priors = ", ".join(f"{p} {a:.3f}/{b:.3f}" for p, (a, b) in sorted(calibration.priors.items()))
    print(f"stored calibration {calibration_id}")
    print(f"prior P(first shown) on content-free pairs, order 1/order 2: {priors}")
    print(f"Platt: P' = sigmoid({calibration.platt.slope:.3f} logit(P) + {calibration.platt.bias:.3f})")
    print_calibration_report(calibration.report)
    print(f"apply it: cai agreement --calibration {calibration_id}; cai export --kind preferences --calibration ...")
    return 0


def cmd_agreement(args, ws: Workspace) -> int:
    import pandas as pd

    from ..agreement import dashboard
    from ..judge_audit import queue_tightening

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
            calibration=args.calibration,
        )
        tightening = queue_tightening(store, args.queue) if args.queue else None
    table = getattr(board, f"by_{args.by}")
    if table.empty:
        raise ValueError("no AI labels match: run `cai label` first, or loosen the filters")
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.3f}".format):
        if args.calibration:
            print(f"(every figure reads the labels through calibration {args.calibration})")
        print(board.verdict.headline())
        print(pd.DataFrame(board.verdict.table()).drop(columns="threshold from").to_string(index=False))
        for advice in board.verdict.advice:
            print(f"- {advice}")
        print(f"\nAI versus human agreement by {args.by} (tie band ±{args.tie_band}; NaN: nothing to compare)")
        print(table.to_string(index=False))
        if args.by == "principle":
            print("\nper-principle audit (flip rate: choice changes under swap; revision_p_better: P(its SL-CAI")
            print("revision beats the answer before it), from `cai eval rounds`; 0.5 is no change)")
            print(board.principle_audit.to_string(index=False))
        if tightening is not None:
            print(f"\ndisagreement-first queue of {args.queue}: agreement reweighted by 1/P(served), as labels came in")
            print("(no labels from that queue yet)" if tightening.empty else tightening.to_string(index=False))
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


def cmd_gate(args, ws: Workspace) -> int:
    import pandas as pd

    from ..label_gate import gate, load_rule, save_rule

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(GateRule) if hasattr(args, f.name)}
    if args.config:
        rule = config_from_args(GateRule, args, "label gate rule")
    else:
        rule = dataclasses.replace(load_rule(ws), **given)
    if args.save:
        print(f"saved the rule to {save_rule(ws, rule)}: exports, reward models and DPO runs that gate read it")
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        run_id = args.run_id or store.latest_label_run()
        if run_id is None:
            raise ValueError("no label run: run `cai label` first")
        decided = gate(store, run_id, rule)
    print(f"label gate for {run_id}: {decided.summary()}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 90, "display.float_format", "{:.3f}".format):
        print(decided.table[["principle_id", "decision", "weight", "reason"]].to_string(index=False))
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

    p = sub.add_parser(
        "gate",
        help="Which principles' AI labels training keeps, down-weights or drops, by their agreement with people.",
    )
    p.add_argument("--run-id", help="The label run (the latest by default).")
    # flags not given keep the data folder's rule (or the --config file's)
    add_dataclass_arguments(p, GateRule, config_file=True)
    p.add_argument("--save", action="store_true", help="Make these settings the data folder's rule.")
    p.set_defaults(func=cmd_gate)

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
    p.add_argument("--calibration", help="Read the labels through this stored calibration (`cai calibrate`).")
    p.add_argument(
        "--queue",
        metavar="RUN",
        help="Also show how the reweighted agreement of RUN's disagreement-first queue tightens.",
    )
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser(
        "calibrate",
        help="Calibrate a label run's judge: its prior on content-free pairs and a Platt fit on human labels.",
    )
    p.add_argument("--run-id", help="The label run (its judge, constitution and settings are asked again).")
    p.add_argument(
        "--model",
        help=f"Ask this judge model for the priors instead of the run's (e.g. another engine). {MODEL_SPEC_HELP}",
    )
    p.add_argument("--list", action="store_true", help="List the stored calibrations and their reports.")
    p.add_argument(
        "--background",
        action="store_true",
        help="Start the calibration as a job, detached (follow it with `cai jobs`), and return at once.",
    )
    p.set_defaults(func=cmd_calibrate)
