"""Constitutions: the principles a model is aligned to, as validated, versioned YAML.

A constitution's *version* is the hash of its canonical content (sorted-key JSON), so two files
that say the same thing share a version whatever their formatting, and any record a model
produces can name the exact text that steered it.

The file stays its author's: saving over an existing file changes only the values that changed
(ruamel.yaml's round trip keeps comments, folded blocks, flow lists, blank lines and key order).
Reading refuses what YAML allows but a constitution never needs and an attacker would use: aliases
(a few lines of them expand into gigabytes, "billion laughs"), duplicate keys (the last would win
silently), and files over MAX_BYTES.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml import YAMLError as RoundTripError
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from .auth import require_operator
from .workspace import write_file_atomically

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
MAX_BYTES = 1_000_000  # the shipped ones hold 6-30 kB; parsing and validating 50 MB took 45 s


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
        return draft_yaml(self.model_dump(mode="json"))


def parse_constitution(text: str, source: str = "<text>") -> Constitution:
    """Parse and validate YAML text; `source` names the file in error messages."""
    data, lines = strict_yaml(text, source)
    if data is None:
        raise ConstitutionError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise ConstitutionError(f"{source}: expected a mapping at the top level, found {type(data).__name__}")
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError("\n".join(_describe(err, data, lines, source) for err in exc.errors())) from None


def strict_yaml(text: str, source: str, what: str = "constitution") -> tuple[object, dict[tuple, int]]:
    """YAML text as a constitution is read (at most MAX_BYTES, no aliases, no duplicate keys), with its line
    index (`_parse_yaml`); anything else raises ConstitutionError naming `source`, the line and the `what`."""
    _check_size(len(text.encode("utf-8")), source, what)
    try:
        return _parse_yaml(text, source, what)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConstitutionError(f"{where}: malformed YAML: {problem}") from None


def read_strict_yaml(path: str | os.PathLike, what: str) -> object:
    """A YAML file's data, read as a constitution file is (`strict_yaml`)."""
    return strict_yaml(_read_yaml_text(Path(path), what), str(path), what)[0]


def _read_yaml_text(path: Path, what: str) -> str:
    """The file's text, its size checked before it is read."""
    try:
        _check_size(path.stat().st_size, str(path), what)
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConstitutionError(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as exc:
        raise ConstitutionError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _check_size(size: int, source: str, what: str = "constitution") -> None:
    if size > MAX_BYTES:
        raise ConstitutionError(f"{source}: {size:,} bytes; a {what} may hold at most {MAX_BYTES:,} bytes")


def load_constitution(path: str | os.PathLike) -> Constitution:
    return parse_constitution(_read_yaml_text(Path(path), "constitution"), str(path))


def save_constitution(constitution: Constitution | str, path: str | os.PathLike) -> Constitution:
    """Validate, then write atomically: the old file stays whole until the new one is complete.

    Accepts raw YAML text (as typed in an editor), written as it is, or a Constitution (as an editor's form
    holds it), written into the existing file's own layout (see the module docstring). Invalid content
    raises ConstitutionError and the file on disk is not touched. Operators only (`NotAllowed`).
    """
    require_operator("save a constitution")
    path = Path(path)
    if isinstance(constitution, str):
        text = constitution if constitution.endswith("\n") else constitution + "\n"
        constitution = parse_constitution(constitution, str(path))
    else:
        constitution = Constitution.model_validate(constitution.model_dump())
        text = _edited_file(path, constitution) or constitution.to_yaml()
        _check_size(len(text.encode("utf-8")), str(path))  # what load_constitution would refuse is never written
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, lambda out: out.write(text.encode("utf-8")))
    return constitution


def _edited_file(path: Path, constitution: Constitution) -> str | None:
    """The text of the file at `path` with the constitution's values put into it: only what changed is
    rewritten. None when there is no readable YAML mapping there to keep (the canonical layout is then used)."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a line the author wrote
    try:
        old_text = path.read_text(encoding="utf-8")
        _parse_yaml(old_text, str(path))  # no aliases, no duplicate keys: what the round trip may safely read
        _, indent, block_seq_indent = load_yaml_guess_indent(old_text)
        rt.indent(mapping=_mapping_indent(old_text), sequence=indent or 4, offset=block_seq_indent or 2)
        tree = rt.load(old_text)
    except (OSError, UnicodeDecodeError, ConstitutionError, RoundTripError, yaml.YAMLError):
        return None
    if not isinstance(tree, dict):
        return None
    data = constitution.model_dump(mode="json")
    explicit = constitution.model_dump(mode="json", exclude_defaults=True)
    out = io.StringIO()
    rt.dump(_merged(tree, data, explicit), out)
    return out.getvalue()


def _mapping_indent(text: str) -> int:
    """How far the file indents a mapping inside a mapping (ruamel guesses only its sequences' indent)."""
    found = re.search(r"^( *)[^\s#-][^\n]*:[ \t]*(?:#[^\n]*)?\n(?:[ \t]*(?:#[^\n]*)?\n)*( +)[^\s#-]", text, re.M)
    return len(found.group(2)) - len(found.group(1)) if found else 2


def _merged(old, new, explicit):
    """`new` written into `old` (a ruamel round-trip node) changing as little as it can: equal values keep
    their node (and its style and comments), a key the file leaves out stays out while its new value is the
    default (`explicit`, the data without defaults, lacks it), a changed text keeps its scalar style."""
    if isinstance(old, dict) and isinstance(new, dict):
        explicit = explicit if isinstance(explicit, dict) else {}
        for key in [k for k in old if k not in new]:
            del old[key]
        for key, value in new.items():
            if key in old:
                old[key] = _merged(old[key], value, explicit.get(key))
            elif key in explicit:
                old[key] = value
        return old
    if isinstance(old, list) and isinstance(new, list):
        explicit = explicit if isinstance(explicit, list) else [None] * len(new)
        del old[len(new) :]
        for i, value in enumerate(new):
            if i < len(old):
                old[i] = _merged(old[i], value, explicit[i] if i < len(explicit) else None)
            else:
                old.append(value)
        return old
    if isinstance(old, str) and isinstance(new, str):
        if old.strip() == new:  # the model strips text: a folded block's final newline is no change
            return old
        return type(old)(new + ("\n" if old.endswith("\n") else "")) if isinstance(old, ScalarString) else new
    return old if old == new and type(old) is type(new) else new


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


try:  # libyaml's parser is 20 times faster than PyYAML's own; the same events come out of both
    from yaml._yaml import CParser as _Parser
except ImportError:  # PyYAML built without libyaml

    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class _Loader(yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver, _Parser):
    """A safe loader whose composer (PyYAML's own, over either parser's events) refuses an alias where it
    meets one, naming its line, before anything could expand it: a walk through aliases is what expands a
    billion laughs."""

    def __init__(self, text: str, source: str, what: str) -> None:
        _Parser.__init__(self, text)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.source = source
        self.what = what

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConstitutionError(
                f"{self.source}, line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                f"in a {self.what}; write the text out in full"
            )
        return super().compose_node(parent, index)


def _parse_yaml(text: str, source: str = "<text>", what: str = "constitution") -> tuple[object, dict[tuple, int]]:
    """The YAML's data and its line index, from one parse. The index maps each YAML path (tuple of keys /
    indices) to its 1-based line, for error messages. Refuses aliases and duplicate keys (naming both lines)
    with ConstitutionError; malformed YAML raises yaml.YAMLError."""
    loader = _Loader(text, source, what)
    try:
        root = loader.get_single_node()
        lines: dict[tuple, int] = {}
        if root is not None:
            _index_lines(root, (), lines, source)
        return (loader.construct_document(root) if root is not None else None), lines
    finally:
        loader.dispose()


def _index_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int], source: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        first_lines: dict = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in first_lines:
                raise ConstitutionError(
                    f"{source}, line {line}: duplicate key {key.value!r} (first at line {first_lines[key.value]})"
                )
            first_lines[key.value] = lines[(*path, key.value)] = line
            _index_lines(value, (*path, key.value), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines, source)


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
    """Validate plain data as an editor's form holds it; the errors read like parse_constitution's. A draft whose
    file would be more than the loader reads back is refused here, while it is edited."""
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError("\n".join(_describe(err, data, {}, source) for err in exc.errors())) from None
    _check_size(len(constitution.to_yaml().encode("utf-8")), source)
    return constitution


def draft_yaml(data: dict) -> str:
    """The YAML of constitution data, valid or not, laid out as a saved file is (the canonical layout)."""
    # libyaml's emitter writes the same text as PyYAML's own, 15 times faster (the page shows it every redraw)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100)


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
