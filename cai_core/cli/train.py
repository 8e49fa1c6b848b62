"""`cai train sft|rm|ppo|dpo|grpo|rloo|resume|list`."""

from __future__ import annotations

import dataclasses

from .. import jobs
from ..jobs import JobFolder, job_kind, list_job_folders
from ..workspace import Workspace
from .flags import add_dataclass_arguments, config_from_args
from .jobs import cmd_resume, launch, run_here


def cmd_train(args, ws: Workspace) -> int:
    from ..train import TrainError
    from ..train.dpo import describe_probability, recorded_probability
    from ..train.launch import PREFIX

    kind = PREFIX + args.kind
    config = config_from_args(job_kind(kind).config, args, f"{args.kind} config", TrainError)
    job = jobs.prepare(kind, config, ws)
    if not (read := recorded_probability(job.path)).empty:
        print(f"preference labels read: {describe_probability(read)}")
    if args.background:
        return launch(job, ws)
    return run_here(kind, dataclasses.replace(config, run_id=job.run_id), ws)


def cmd_train_resume(args, ws: Workspace) -> int:
    from ..train.config import check_run_id
    from ..train.launch import PREFIX

    job = JobFolder(ws.runs_dir / check_run_id(args.run_id))
    if not (job.path / "run.json").exists() or not job.spec["kind"].startswith(PREFIX):
        raise FileNotFoundError(f"no training run {args.run_id!r} under {ws.runs_dir}")
    return cmd_resume(args, ws)


def cmd_train_list(args, ws: Workspace) -> int:
    from ..train.models import finished_model
    from ..train.monitor import alert_lines, monitor_metrics

    jobs = [j for j in list_job_folders(ws.runs_dir) if j.spec["kind"].startswith("train-")]
    if not jobs:
        print(f"no training runs under {ws.runs_dir}")
    for job in jobs:
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
