"""Prompt sets from JSON lines, CSV, plain text or a `datasets` dataset, with line-numbered errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MAX_FILE_BYTES = 256 * 2**20
"""The most a user's file may hold once decompressed: 100k long prompts fit, while a 3 MB gzip bomb unpacks to
1 GiB (and took 307 s and 3.7 GB of memory to refuse line by line)."""

MAX_FIELD_CHARS = 1_000_000
"""The longest CSV field read (Python's csv module stops at 131,072 characters): a long prompt or response fits,
and a file that is one runaway quoted field is refused naming its line."""

csv.field_size_limit(MAX_FIELD_CHARS)


class PromptFileError(ValueError):
    """A prompt source that cannot be read; the message names the file and the bad lines."""


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    category: str = ""
    label: str = ""  # what an evaluation set says the prompt is (e.g. "harmful" or "safe"), verbatim


@dataclass(frozen=True)
class PromptSet:
    source: str
    prompts: list[Prompt]
    problems: list[str] = field(default_factory=list)  # bad lines that were skipped, each "file:line: why"

    @property
    def digest(self) -> str:
        """Content hash: a job over the same prompts has the same identity, wherever the file lies."""
        payload = json.dumps([(p.id, p.prompt, p.category) for p in self.prompts], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def load_prompts(
    source: str | Path,
    *,
    on_bad_line: Literal["stop", "skip"] = "stop",
    prompt_field: str = "prompt",
    id_field: str = "id",
    category_field: str = "category",
    label_field: str = "label",
    limit: int | None = None,
) -> PromptSet:
    """Read prompts. `source` is a .jsonl/.csv/.txt file, a `datasets` folder saved with
    `save_to_disk`, or `hf:NAME[:SPLIT]` for a dataset the `datasets` library can load."""
    source = str(source)
    fields = (prompt_field, id_field, category_field, label_field)
    if source.startswith("hf:"):
        rows = _dataset_rows(source.removeprefix("hf:"))
    else:
        path = Path(source)
        if not path.exists():
            raise PromptFileError(f"{path}: no such prompt file")
        if path.is_dir():
            rows = _dataset_rows(str(path))
        elif path.suffix == ".jsonl":
            rows = _jsonl_rows(path)
        elif path.suffix == ".csv":
            rows = csv_rows(path)
        elif path.suffix == ".txt":
            rows = _txt_rows(path, prompt_field)
        else:
            raise PromptFileError(f"{path}: unknown prompt format {path.suffix!r} (use .jsonl, .csv, .txt)")

    prompts, problems, seen = [], [], set()
    for line, row in rows:
        try:
            prompts.append(_to_prompt(row, line, fields, seen))
        except PromptFileError as exc:
            problems.append(f"{source}:{line}: {exc}")
        if limit and len(prompts) >= limit:
            break
    if problems and on_bad_line == "stop":
        shown = "\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise PromptFileError(f"{len(problems)} bad line(s) in {source} (skip bad lines to go without them):\n{shown}")
    if not prompts:
        raise PromptFileError(f"{source}: no prompts found")
    return PromptSet(source, prompts, problems)


def read_text(path: Path, error: type[ValueError] = PromptFileError, *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A user's text file (gzip-compressed when its name ends in .gz), decoded as UTF-8 (a byte-order mark is
    allowed). Anything else raises `error` naming the file, the line and column, and the byte that is not UTF-8.
    A file over `max_bytes` (decompressed) raises `error` once that much is read: a gzip bomb is never unpacked
    whole."""
    path = Path(path)
    try:
        with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise error(f"{path}: not a whole gzip file ({exc})") from None
    if len(data) > max_bytes:
        raise error(
            f"{path}: holds more than {max_bytes:,} bytes{' once decompressed' if path.suffix == '.gz' else ''}; "
            "split it into smaller files"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise error(
            f"{path}, line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8 ({exc.reason}); "
            "the file must be UTF-8 text: save it as UTF-8 (from Latin-1 or Windows-1252, e.g. "
            "`iconv -f latin1 -t utf-8`)"
        ) from None


def _to_prompt(row, line: int, fields: tuple[str, str, str, str], seen: set[str]) -> Prompt:
    prompt_field, id_field, category_field, label_field = fields
    if isinstance(row, Exception):
        raise PromptFileError(str(row))
    if not isinstance(row, dict):
        raise PromptFileError(f"expected an object, found {type(row).__name__}")
    text = row.get(prompt_field)
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(f"missing or empty {prompt_field!r}")
    pid = str(row.get(id_field) or f"line-{line}")
    if pid in seen:
        raise PromptFileError(f"duplicate id {pid!r}")
    seen.add(pid)
    return Prompt(pid, text.strip(), str(row.get(category_field) or ""), str(row.get(label_field) or ""))


def _jsonl_rows(path: Path):
    for n, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, PromptFileError(f"not valid JSON ({exc.msg})")


def csv_rows(path: Path, error: type[ValueError] = PromptFileError) -> Iterator[tuple[int, dict]]:
    """A CSV file's rows as dicts keyed by its header, each with the line it ends on; a row the csv module cannot
    read (a field over MAX_FIELD_CHARS, a stray NUL) raises `error` naming the file and the line."""
    reader = csv.DictReader(io.StringIO(read_text(path, error), newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # DictReader's own line_num moves only after a good row; its reader's is current
            raise error(f"{path}, line {reader.reader.line_num}: not readable as CSV ({exc})") from None
        yield reader.line_num, row


def _txt_rows(path: Path, prompt_field: str):
    for n, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            yield n, {prompt_field: line}


def _dataset_rows(name: str):
    import datasets

    name, _, split = name.partition(":")
    try:
        if Path(name).is_dir():
            data = datasets.load_from_disk(name)
        else:
            data = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many types; the user needs the name and the reason
        raise PromptFileError(f"cannot load dataset {name!r}: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        data = data[split or next(iter(data))]
    yield from enumerate(data, start=1)
