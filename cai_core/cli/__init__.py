"""The `cai` command: a thin door onto cai_core. Every subcommand is a few calls into the library.

Each group of verbs is a module here, as TRL's `cli/commands/` are: constitution; jobs (generate, resume, jobs,
cancel, ingest); traces; export; app (app, setup); bench; rlaif (pairs, label, import-labels, agreement); train;
evaluate (eval), `recipe`; engine (the vLLM service). A module gives `add_parsers(sub)` and its `cmd_*` functions."""

from __future__ import annotations

import argparse
import os
import sys

from ..backends import MODEL_SPEC_HELP, BackendError
from ..config import ConfigError
from ..constitution import ConstitutionError
from ..prompts import PromptFileError
from ..store import StoreError
from ..workspace import Workspace
from . import app, bench, constitution, engine, evaluate, export, jobs, recipe, rlaif, traces, train

# What the user can fix gets one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConstitutionError, PromptFileError, BackendError, StoreError, OSError, KeyError, ValueError)
# in the order `cai --help` lists them
COMMANDS = (constitution, jobs, traces, export, app, engine, bench, rlaif, train, evaluate, recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description=f"{__doc__.splitlines()[0]} Models: {MODEL_SPEC_HELP}")
    parser.add_argument(
        "--data-dir", help="Data folder (database, runs, models). Default: the project's data/ or $CAI_DATA_DIR."
    )
    parser.add_argument("--db", help="Database file. Default: DATA_DIR/cai.duckdb or $CAI_DB.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Offline by default: a hub lookup that cannot succeed otherwise retries for most of a minute.
    # HF_HUB_OFFLINE=0 lets hub ids download where the hub is reachable.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    ws = Workspace.from_env(args.data_dir, args.db)
    try:
        return args.func(args, ws)
    except BrokenPipeError:
        # The reader went away (`cai jobs | head`): stop quietly, and keep Python's last flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, ConfigError) and exc.field:
            # a field at fault is named as the flag that sets it (a config file's key is the flag's name)
            message = exc.named("--" + exc.field.replace("_", "-"))
        print(
            f"error: {'; '.join(line.strip() for line in str(message).splitlines() if line.strip())}", file=sys.stderr
        )
        return 2
