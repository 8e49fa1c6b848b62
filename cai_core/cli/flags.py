"""Command-line flags from config dataclasses: one flag per field, its help from the field's metadata (as TRL's
configs do), so a config is declared once for the CLI, YAML files, the pages' forms and the saved run; and, where a
command takes one, a `--config` YAML file whose values the flags given override.

`trl.TrlParser` (trl 1.16) does that last part for TRL's scripts, and is not used here because it does not fit:
- it hands a field's whole metadata to argparse as keyword arguments, and ours also says what the field holds
  for the browser check and the forms (`model_spec`, `path`, `label`, `min`): argparse refuses those keys;
- it is a whole parser that finds `--config` anywhere in argv, where each `cai` command is a subparser;
- a config file's `env:` mapping sets the process's environment variables, its YAML errors escape without the
  file's name, and its unknown keys come back as flag strings, where our loader (`cai_core.config`) names the file
  and the known fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..backends import MODEL_SPEC_HELP
from ..config import ConfigError, load_config_file


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), config_file: bool = False
) -> None:
    """One flag per config field, its help from the field's metadata. With `config_file`, a `--config` flag too,
    and the fields' flags the user does not give stay absent, so that they do not overwrite the file's values."""
    if config_file:
        parser.add_argument("--config", help="A YAML file of the config's fields; flags given here override it.")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        if f.metadata.get("model_spec"):
            help_text = f"{help_text} {MODEL_SPEC_HELP}"
        if kind is bool:
            action = parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else default
            required = default is None and f.default_factory is dataclasses.MISSING
            action = parser.add_argument(flag, nargs="+", default=default, required=required, help=help_text)
        else:
            args = typing.get_args(kind)
            literal = next((a for a in args if typing.get_origin(a) is typing.Literal), kind)
            choices = typing.get_args(literal) if typing.get_origin(literal) is typing.Literal else None
            base = next((a for a in args if a in (int, float, str)), kind if kind in (int, float, str) else str)
            action = parser.add_argument(
                flag,
                type=base,
                choices=choices,
                default=default,
                required=f.default is dataclasses.MISSING,
                help=help_text,
            )
        if config_file:
            action.default, action.required = argparse.SUPPRESS, False


def config_from_args(cls, args: argparse.Namespace, what: str = "config", error: type[ConfigError] = ConfigError):
    """Config `cls` from the command's flags, over its `--config` file's values where it was given one."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    if getattr(args, "config", None):
        return load_config_file(cls, args.config, what, given, error)
    return cls(**given)
