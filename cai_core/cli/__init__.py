"""The `cai` command: a thin door onto cai_core. Every subcommand is a few calls into the library.

Each group of verbs is a module here, as TRL's `cli/commands/` are: constitution; jobs (generate, resume, jobs,
cancel, ingest); traces; export; app (app, setup); bench; rlaif (pairs, label, import-labels, agreement); train;
evaluate (eval), `recipe`; engine (the vLLM service). A module gives `add_parsers(sub)` and its `cmd_*` functions."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..backends import MODEL_SPEC_HELP, BackendError
from ..config import ConfigError
from ..prompts import PromptFileError
from ..workspace import Workspace

# Each verb group's module and the commands it adds, in the order `cai --help` lists them. A command imports only
# its own module: a job's process (`cai resume`, as the pages start one) would otherwise import every other verb's
# dependencies first, the database's pandas among them, seconds on a loaded machine before its first model call.
COMMANDS = {
    "constitution": ("constitution",),
    "jobs": ("generate", "resume", "jobs", "cancel", "ingest"),
    "traces": ("traces",),
    "export": ("export", "push-model"),
    "app": ("app", "setup"),
    "engine": ("engine",),
    "bench": ("bench",),
    "rlaif": ("pairs", "label", "import-labels", "gate", "agreement", "calibrate"),
    "train": ("train",),
    "evaluate": ("eval",),
    "recipe": ("recipe",),
}
GLOBAL_OPTIONS_WITH_VALUES = ("--data-dir", "--db")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `cai` parser; given a command, with only the verbs of that command's module."""
    parser = argparse.ArgumentParser(prog="cai", description=f"{__doc__.splitlines()[0]} Models: {MODEL_SPEC_HELP}")
    parser.add_argument(
        "--data-dir", help="Data folder (database, runs, models). Default: the project's data/ or $CAI_DATA_DIR."
    )
    parser.add_argument("--db", help="Database file. Default: DATA_DIR/cai.duckdb or $CAI_DB.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, commands in COMMANDS.items():
        if command is None or command in commands:
            importlib.import_module(f"{__name__}.{module}").add_parsers(sub)
    return parser


def command_named(argv: list[str]) -> str | None:
    """The command `argv` names, when it is one of `COMMANDS` (not --help, not a typo, which the whole parser
    answers): the first word that is neither a global option nor its value."""
    words = iter(argv)
    for word in words:
        if word in GLOBAL_OPTIONS_WITH_VALUES:
            next(words, None)
        elif not word.startswith("-"):
            return word if any(word in commands for commands in COMMANDS.values()) else None
    return None


def user_errors() -> tuple[type[BaseException], ...]:
    """What the user can fix: one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
    Imported when an error is met: the store's and the constitution's modules cost a job's start seconds."""
    from ..constitution import ConstitutionError
    from ..store import StoreError

    return (ConstitutionError, PromptFileError, BackendError, StoreError, OSError, KeyError, ValueError)


def main(argv: list[str] | None = None) -> int:
    # Offline by default: a hub lookup that cannot succeed otherwise retries for most of a minute.
    # HF_HUB_OFFLINE=0 lets hub ids download where the hub is reachable.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_named(argv)).parse_args(argv)
    ws = Workspace.from_env(args.data_dir, args.db)
    try:
        return args.func(args, ws)
    except BrokenPipeError:
        # The reader went away (`cai jobs | head`): stop quietly, and keep Python's last flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, ConfigError) and exc.field:
            # a field at fault is named as the flag that sets it (a config file's key is the flag's name)
            message = exc.named("--" + exc.field.replace("_", "-"))
        print(
            f"error: {'; '.join(line.strip() for line in str(message).splitlines() if line.strip())}", file=sys.stderr
        )
        return 2
