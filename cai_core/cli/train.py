"""`cai train sft|rm|ppo|dpo|grpo|rloo|resume|list`."""

from __future__ import annotations

from ..jobs import TRAINING_KINDS, JobFolder, list_job_folders, training_algorithm, training_kind_name
from ..workspace import Workspace
from .flags import add_dataclass_arguments, config_from_args
from .jobs import cmd_resume, start_job


def cmd_train(args, ws: Workspace) -> int:
    from ..train import TrainError, config_class

    config = config_from_args(config_class(args.kind), args, f"{args.kind} config", TrainError)
    return start_job(training_kind_name(args.kind), args, ws, config, prepared=_print_labels_read)[0]


def _print_labels_read(job: JobFolder) -> None:
    from ..train.dpo import describe_probability, recorded_probability

    if not (read := recorded_probability(job.path)).empty:
        print(f"preference labels read: {describe_probability(read)}")


def cmd_train_resume(args, ws: Workspace) -> int:
    from ..train.config import check_run_id

    job = JobFolder(ws.runs_dir / check_run_id(args.run_id))
    if not (job.path / "run.json").exists() or not training_algorithm(job.spec["kind"]):
        raise FileNotFoundError(f"no training run {args.run_id!r} under {ws.runs_dir}")
    return cmd_resume(args, ws)


def cmd_train_list(args, ws: Workspace) -> int:
    from ..train.models import finished_model
    from ..train.monitor import alert_lines, monitor_metrics

    runs = list_job_folders(ws.runs_dir, kinds=TRAINING_KINDS)
    if not runs:
        print(f"no training runs under {ws.runs_dir}")
    for job in runs:
        p = job.progress()
        where = finished_model(job.path) or p.message
        print(f"{job.run_id:<18} {job.spec['kind']:<11} {p.status:<10} {p.done:>6}/{p.total:<6} {where}")
        for line in alert_lines(monitor_metrics(job)):
            print(f"  warning: reward-hacking monitor: {line}")
    return 0


def add_parsers(sub) -> None:
    from ..train import KINDS, config_class

    train = sub.add_parser("train", help="Train: SL-CAI SFT, reward model, PPO, DPO, GRPO, RLOO; list runs.")
    train_sub = train.add_subparsers(dest="action", required=True)
    for kind in KINDS:
        cls = config_class(kind)
        p = train_sub.add_parser(kind, help=cls.summary)
        p.add_argument("--background", action="store_true", help="Start the run detached and return at once.")
        add_dataclass_arguments(p, cls, config_file=True)
        p.set_defaults(func=cmd_train, kind=kind)
    p = train_sub.add_parser("resume", help="Continue a training run from its last checkpoint.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_train_resume)
    p = train_sub.add_parser("list", help="List training runs: status, step, final model folder or reason.")
    p.set_defaults(func=cmd_train_list)
