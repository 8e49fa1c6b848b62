"""What every config shares: it describes its fields, checks itself when it is made, and loads from a YAML file.

A config is a dataclass whose fields' metadata say what they hold, as TRL's configs do:
- `help`: one line, for the CLI's flag and the pages' forms;
- `min`: the least value a number may take (None, where allowed, is not checked);
- `model_spec`: a model spec (default, a run id, a path, a hub id, engine:model), as the sidebar's model is (the
  CLI's help says so); `model`: a model that takes no engine prefix (one to train, a reward model);
- `path`: a file or folder the job reads;
- `text`: neither, a value that reaches the job as typed (a name, a list of module names, a run id).

`browser_value` holds a value typed in the browser to that description, and refuses a field that has none.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .workspace import Workspace

# what a field's metadata may say it holds, and the kind each key stands for
FIELD_KINDS = {"model_spec": "model", "model": "model", "path": "path", "text": "text"}


class ConfigError(ValueError):
    """A config value no run could use; one line. `field` names the field at fault, when one is: each door names it
    its own way (the CLI as a flag, a page as its form's label, a YAML file as its key, which is what `str()`
    gives)."""

    def __init__(self, problem: str, field: str | None = None):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.problem, self.field = problem, field

    def named(self, name: str) -> str:
        """The message with the field called `name` (a flag, a form label)."""
        return f"{name}: {self.problem}" if self.field else str(self)


class CheckedConfig:
    """A config dataclass that checks itself once, when it is made: a bad value is refused where it was typed, not
    inside the background job. `check` reads each field's `min`; a config adds its other rules to it."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value, least = getattr(self, f.name), f.metadata.get("min")
            if least is not None and value is not None and value < least:
                raise ConfigError(f"is {value}: it must be at least {least}", f.name)


def field_kind(f: dataclasses.Field) -> str | None:
    """What a field holds (model, path or text), as its metadata says; None when it does not say, or says two."""
    kinds = {kind for key, kind in FIELD_KINDS.items() if f.metadata.get(key)}
    return kinds.pop() if len(kinds) == 1 else None


def browser_value(cls: type, name: str, value: str, workspace: Workspace, endpoints: list[Endpoint]) -> str:
    """A value typed in the browser for field `name` of config `cls`, held to what the field holds: a model spec
    as the sidebar's is (`browser_model_spec`), a path inside the workspace (made absolute), text as typed; a run
    id of this data folder, `default` and `store` stand as typed. A field whose metadata does not say what it
    holds is refused (fail-closed): a path field nobody marked would otherwise reach the server unchecked.
    `ConfigError` naming the field otherwise."""
    from .browser_models import browser_model_spec
    from .endpoints import EndpointError
    from .train.config import RUN_ID
    from .workspace import OutsideWorkspace

    kind = field_kind(next(f for f in dataclasses.fields(cls) if f.name == name))
    if kind is None:
        raise ConfigError(
            "cannot be typed in the browser: its config does not say whether it holds a model, a path or text", name
        )
    if kind == "text" or value in ("default", "store"):
        return value
    if RUN_ID.match(value) and (workspace.runs_dir / value / "run.json").exists():
        return value
    try:
        if kind == "model":
            return browser_model_spec(value, workspace, endpoints)
        return str(workspace.resolve_browser_path(value))
    except (OutsideWorkspace, EndpointError) as exc:
        raise ConfigError(str(exc), name) from None


def config_from_mapping(
    cls: type, data: dict, what: str, error: type[ConfigError] = ConfigError, source: str | Path | None = None
):
    """Config `cls` from a mapping read from a form or the file `source` (`what` names the config in errors).
    Unknown fields are refused with their names, and a float field given as text (YAML reads 1e-5 as a string)
    is read as a number."""
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - known):
        where = f"{source}: " if source else ""
        raise error(f"{where}unknown {what} field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if isinstance(value, str) and float in (hints[name], *typing.get_args(hints[name])):
            try:
                value = float(value)
            except ValueError:
                raise error(f"{value!r} is not a number", name) from None
        values[name] = value
    return cls(**values)


def load_config_file(
    cls: type, path: str | Path, what: str, overrides: dict | None = None, error: type[ConfigError] = ConfigError
):
    """Config `cls` from a YAML file of its fields, `overrides` (the flags given) replacing the file's values; an
    `error` naming the file for one that is no mapping of known fields. The file is read as a constitution is
    (`read_strict_yaml`: no aliases, no repeated keys, a size limit), since a few lines of aliases can expand into
    gigabytes wherever a value is shown."""
    from .constitution import ConstitutionError, read_strict_yaml

    try:
        data = read_strict_yaml(path, what) or {}
    except ConstitutionError as exc:
        raise error(str(exc)) from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return config_from_mapping(cls, {**data, **(overrides or {})}, what, error, source=path)
