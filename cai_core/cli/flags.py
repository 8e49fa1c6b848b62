"""Command-line flags from config dataclasses: one flag per field, its help from the field's metadata (as TRL's
configs do), so a config is declared once for the CLI, YAML files, the pages' forms and the saved run."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..backends import MODEL_SPEC_HELP


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
        if f.metadata.get("model_spec"):
            help_text = f"{help_text} {MODEL_SPEC_HELP}"
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
