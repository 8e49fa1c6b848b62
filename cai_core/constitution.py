"""Constitutions: the principles a model is aligned to, as validated, versioned YAML.

A constitution's *version* is the hash of its canonical content (sorted-key JSON), so two files
that say the same thing share a version whatever their formatting, and any record a model
produces can name the exact text that steered it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


class ConstitutionError(ValueError):
    """A constitution that cannot be loaded or saved; the message names file, principle, field and line."""


class _Strict(BaseModel):
    # Unknown fields are typos more often than extensions: reject them so they are seen.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Principle(_Strict):
    id: str = Field(pattern=SLUG_PATTERN, description="Slug, unique within its constitution.")
    name: str = Field(min_length=1)
    critique_request: str = Field(min_length=1, description="Asks the model to critique its last answer.")
    revision_request: str = Field(min_length=1, description="Asks the model to rewrite its answer.")
    preference_question: str = Field(min_length=1, description="Comparison question for AI feedback.")
    tags: list[str] = Field(default_factory=list)
    enabled: bool = True


class FewShotExample(_Strict):
    """A worked critique→revision, shown to the model before the real conversation."""

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    critique_request: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision_request: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class GenerationDefaults(_Strict):
    rounds: int = Field(4, ge=1, le=16, description="Critique→revision rounds per answer (Bai et al. used 4).")
    principle_sampling: Literal["random", "round_robin"] = "random"
    stop_phrases: list[str] = Field(
        default_factory=list,
        description="A critique containing one of these (case-insensitive) ends the trace early.",
    )


class Constitution(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    principles: list[Principle] = Field(min_length=1)
    few_shot_examples: list[FewShotExample] = Field(default_factory=list)
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        seen: set[str] = set()
        for p in principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return principles

    @model_validator(mode="after")
    def _some_enabled(self) -> Constitution:
        if not any(p.enabled for p in self.principles):
            raise ValueError("every principle is disabled; enable at least one")
        return self

    @property
    def enabled_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.enabled]

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(f"constitution {self.name!r} has no principle {principle_id!r}")

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def version(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def snapshot(self) -> dict[str, str]:
        """Name, version and text, as a job records the constitution it ran under."""
        return {"name": self.name, "version": self.version, "content": self.to_yaml()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


def parse_constitution(text: str, source: str = "<text>") -> Constitution:
    """Parse and validate YAML text; `source` names the file in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConstitutionError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        raise ConstitutionError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise ConstitutionError(f"{source}: expected a mapping at the top level, found {type(data).__name__}")
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(text)
        raise ConstitutionError("\n".join(_describe(err, data, lines, source) for err in exc.errors())) from None


def load_constitution(path: str | os.PathLike) -> Constitution:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConstitutionError(f"{path}: no such constitution file") from None
    except UnicodeDecodeError as exc:
        raise ConstitutionError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_constitution(text, str(path))


def save_constitution(constitution: Constitution | str, path: str | os.PathLike) -> Constitution:
    """Validate, then write atomically: the old file stays whole until the new one is complete.

    Accepts a Constitution or raw YAML text (as typed in an editor); invalid text raises
    ConstitutionError and the file on disk is not touched.
    """
    path = Path(path)
    if isinstance(constitution, str):
        constitution = parse_constitution(constitution, str(path))
    else:
        constitution = Constitution.model_validate(constitution.model_dump())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(constitution.to_yaml())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return constitution


def diff_constitutions(old: Constitution, new: Constitution, old_label: str = "old", new_label: str = "new") -> str:
    """A unified diff of the canonical YAML of two constitutions."""
    return "".join(
        difflib.unified_diff(
            old.to_yaml().splitlines(keepends=True),
            new.to_yaml().splitlines(keepends=True),
            fromfile=f"{old_label} ({old.version})",
            tofile=f"{new_label} ({new.version})",
        )
    )


def list_constitutions(directory: str | os.PathLike) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml")) + sorted(Path(directory).glob("*.yml"))


# --- error messages -------------------------------------------------------------------------


def _line_index(text: str) -> dict[tuple, int]:
    """Map each YAML path (tuple of keys / indices) to its 1-based line."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    index: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[(*path, key.value)] = key.start_mark.line + 1
                walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return index


def _describe(err: dict, data: dict, lines: dict[tuple, int], source: str) -> str:
    loc = tuple(err["loc"])
    parts = []
    if len(loc) >= 2 and loc[0] == "principles" and isinstance(loc[1], int):
        principle = (data.get("principles") or [None] * (loc[1] + 1))[loc[1]]
        pid = principle.get("id") if isinstance(principle, dict) else None
        parts.append(f"principle {loc[1] + 1}" + (f" ({pid!r})" if pid else ""))
        field = ".".join(str(x) for x in loc[2:])
    else:
        field = ".".join(str(x) for x in loc)
    if field:
        parts.append(f"field {field!r}")
    line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
    where = f"{source}, line {line}" if line else source
    message = err["msg"]
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {', '.join(parts) or 'constitution'}: {message}"


# --- editing: what an editor (the constitution page) does with a draft ----------------------


def constitution_from_data(data: dict, source: str = "<editor>") -> Constitution:
    """Validate plain data as an editor's form holds it; the errors read like parse_constitution's."""
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError("\n".join(_describe(err, data, {}, source) for err in exc.errors())) from None


def draft_yaml(data: dict) -> str:
    """The YAML of constitution data, valid or not, laid out as a saved file is."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def unique_principle_id(base: str, taken: Iterable[str]) -> str:
    """`base`, or the first free `base-2`, `base-3`, ...: ids must stay unique within a constitution."""
    taken = set(taken)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def copy_constitution(
    template: str | os.PathLike, directory: str | os.PathLike, file_stem: str, name: str | None = None
) -> tuple[Path, Constitution]:
    """Start a new constitution file DIRECTORY/FILE_STEM.yaml from a template; never overwrites a file."""
    if not re.match(SLUG_PATTERN, file_stem):
        raise ConstitutionError(
            f"file name {file_stem!r}: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
        )
    path = Path(directory) / f"{file_stem}.yaml"
    if path.exists():
        raise ConstitutionError(f"{path} already exists; pick another name")
    constitution = load_constitution(template)
    if name and name.strip():
        constitution = constitution.model_copy(update={"name": name.strip()})
    return path, save_constitution(constitution, path)
