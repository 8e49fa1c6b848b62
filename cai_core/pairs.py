"""Response pairs to compare, and people's labels on them, from every place they come from.

- sampled: K >= 2 answers per prompt from any backend, paired all-against-all or neighbour-to-neighbour
  (a background-capable job, resumable like SL-CAI generation);
- sl-cai: a trace's first answer against its final revision, from the store;
- import: a pairs file (prompt, response_a, response_b), or Anthropic's hh-rlhf files, whose
  chosen/rejected transcripts carry the crowdworkers' labels; and a generic labels file (pair id,
  label, annotator) for labels made elsewhere.

A pair's id is a hash of its prompt and its two responses in order, so importing or deriving the same
pair twice stores it once. Where one response is known to be the better (chosen vs rejected, revision
vs first answer), which of them becomes response_a is decided by a coin seeded on the content, so
that "a" is not always the right answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .auth import require_operator
from .backends import DEFAULT_MODEL, Backend, SamplingParams, load_backend
from .config import CheckedConfig
from .jobs import JobFolder, JobKind, Plan, engine_name
from .prompts import csv_rows, load_prompts, read_text
from .records import HUMAN_CHOICES, HumanLabel, Pair, to_row
from .tracking import TrackerChoice, tracker_field
from .workspace import Workspace

ASSISTANT_TURN = "\n\nAssistant:"
HH_RLHF_ANNOTATOR = "hh-rlhf"


class PairFileError(ValueError):
    """A pairs or labels file that cannot be read; the message names the file and the bad lines."""


def pair_id_for(prompt: str, response_a: str, response_b: str) -> str:
    return "p-" + hashlib.sha256(json.dumps([prompt, response_a, response_b]).encode()).hexdigest()[:16]


def _better_goes_first(*texts: str) -> bool:
    return hashlib.sha256(json.dumps(texts).encode()).digest()[0] & 1 == 0


# --- hh-rlhf ---------------------------------------------------------------------------------------

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def transcript_messages(prompt: str) -> list[dict[str, str]]:
    """A pair's prompt as chat messages: an hh-rlhf transcript turn by turn, anything else one user turn."""
    text = prompt.strip()
    if not text.startswith("Human:"):
        return [{"role": "user", "content": text}]
    parts = _TURN.split(text)
    return [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2], strict=True)
    ]


def split_transcript(text: str) -> tuple[str, str]:
    """(the conversation before the last Assistant turn, that turn's response)."""
    cut = text.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise PairFileError(f"no {ASSISTANT_TURN.strip()!r} turn")
    return text[:cut].strip(), text[cut + len(ASSISTANT_TURN) :].strip()


@dataclass(frozen=True)
class Imported:
    pairs: list[Pair]
    labels: list[HumanLabel]
    problems: list[str] = field(default_factory=list)  # skipped bad lines, each "file:line: why"
    ties: int = 0  # pairs whose two responses are the same text, labelled "tie"


def read_hh_rlhf(path: str | Path, *, limit: int | None = None, skip_bad_lines: bool = False) -> Imported:
    """Pairs and crowdworker labels from an hh-rlhf file (JSON lines, optionally gzipped).

    The prompt is the shared conversation; the responses are the two last Assistant turns, placed as
    a/b by a content-seeded coin, and the label (annotator "hh-rlhf") names the chosen one. A pair
    whose two responses are identical is kept and labelled "tie": nobody could prefer either, and
    dropping it would silently shorten the file."""
    path = Path(path)
    pairs, labels, problems, ties = [], [], [], 0
    for line, row in _json_lines(path):
        try:
            if isinstance(row, Exception):
                raise row
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("chosen"), str)
                or not isinstance(row.get("rejected"), str)
            ):
                raise PairFileError("expected an object with string fields 'chosen' and 'rejected'")
            prompt, chosen = split_transcript(row["chosen"])
            rejected_prompt, rejected = split_transcript(row["rejected"])
            if prompt != rejected_prompt:
                raise PairFileError("'chosen' and 'rejected' differ before their last Assistant turn")
        except PairFileError as exc:
            problems.append(f"{path}:{line}: {exc}")
            continue
        chosen_first = _better_goes_first(prompt, chosen, rejected)
        a, b = (chosen, rejected) if chosen_first else (rejected, chosen)
        pair = Pair(
            pair_id_for(prompt, a, b),
            prompt,
            a,
            b,
            "import",
            path.name,
            line,
            "chosen" if chosen_first else "rejected",
            "rejected" if chosen_first else "chosen",
        )
        tie = chosen == rejected
        ties += tie
        pairs.append(pair)
        labels.append(HumanLabel(pair.pair_id, HH_RLHF_ANNOTATOR, "tie" if tie else ("a" if chosen_first else "b")))
        if limit and len(pairs) >= limit:
            break
    _stop_on_problems(problems, skip_bad_lines, path)
    return Imported(pairs, labels, problems, ties)


# --- generic files ---------------------------------------------------------------------------------


def read_pairs_file(path: str | Path, *, skip_bad_lines: bool = False) -> Imported:
    """Pairs from JSON lines or CSV with `prompt`, `response_a`, `response_b` (and an optional `pair_id`), to
    import: operators only."""
    require_operator("import pairs")
    path = Path(path)
    pairs, problems = [], []
    for line, row in _rows(path):
        try:
            fields_ = _require(row, ("prompt", "response_a", "response_b"))
        except PairFileError as exc:
            problems.append(f"{path}:{line}: {exc}")
            continue
        prompt, a, b = (fields_[k].strip() for k in ("prompt", "response_a", "response_b"))
        pair_id = str(row.get("pair_id") or "").strip() or pair_id_for(prompt, a, b)
        pairs.append(Pair(pair_id, prompt, a, b, "import", path.name, line, "response_a", "response_b"))
    _stop_on_problems(problems, skip_bad_lines, path)
    return Imported(pairs, [], problems)


LABEL_ALIASES = {"a": "a", "b": "b", "tie": "tie", "both_bad": "both_bad", "both-bad": "both_bad", "skip": "skip"}


def read_labels_file(path: str | Path, *, annotator: str | None = None, skip_bad_lines: bool = False) -> Imported:
    """Labels from JSON lines or CSV with `pair_id`, `label` (a, b, tie, both_bad, skip; any case) and
    `annotator` (or one annotator for the whole file), optionally `rationale`."""
    path = Path(path)
    labels, problems = {}, []
    for line, row in _rows(path):
        try:
            fields_ = _require(row, ("pair_id", "label") if annotator else ("pair_id", "label", "annotator"))
            choice = LABEL_ALIASES.get(fields_["label"].strip().lower())
            if choice is None:
                raise PairFileError(f"label {fields_['label']!r}: expected one of {', '.join(HUMAN_CHOICES)}")
        except PairFileError as exc:
            problems.append(f"{path}:{line}: {exc}")
            continue
        pair_id, who = fields_["pair_id"].strip(), str(row.get("annotator") or annotator).strip()
        # a later line for the same (pair, annotator) is a correction of the earlier one
        labels[(pair_id, who)] = HumanLabel(pair_id, who, choice, False, str(row.get("rationale") or ""))
    _stop_on_problems(problems, skip_bad_lines, path)
    return Imported([], list(labels.values()), problems)


def looks_like_hh_rlhf(path: str | Path) -> bool:
    """Whether a file's first record has hh-rlhf's `chosen` and `rejected` transcripts."""
    path = Path(path)
    first = next(_json_lines(path), None) if _is_json_lines(path) else None
    return first is not None and isinstance(first[1], dict) and {"chosen", "rejected"} <= first[1].keys()


LABEL_FORMATS = ("auto", "hh-rlhf", "labels")


@dataclass(frozen=True)
class LabelImport:
    """What `import_labels` read and stored."""

    found: Imported
    hh_rlhf: bool  # the file was read as hh-rlhf (pairs with crowdworker labels), else as a labels file
    pairs_added: int
    labels_added: int
    labels_kept: int  # labels the file gave for a (pair, annotator) that someone had already labelled: kept


def import_labels(
    store,
    path: str | Path,
    *,
    file_format: str = "auto",
    limit: int | None = None,
    annotator: str | None = None,
    skip_bad_lines: bool = False,
    importer: str,
) -> LabelImport:
    """Read people's labels from a file and store them with their pairs: an hh-rlhf file (`auto` tells one by
    its first record) or a labels file (pair_id, label, annotator). What `cai import-labels` and the Data page
    both call. Operators only; IMPORTER (the login importing) is recorded with every label, which never
    replaces a label someone saved in the app or another importer's (`Store.import_human_labels`)."""
    require_operator("import labels")
    if file_format not in LABEL_FORMATS:
        raise ValueError(f"format {file_format!r}: expected one of {', '.join(LABEL_FORMATS)}")
    hh = file_format == "hh-rlhf" or (file_format == "auto" and looks_like_hh_rlhf(path))
    if hh:
        found = read_hh_rlhf(path, limit=limit, skip_bad_lines=skip_bad_lines)
    else:
        found = read_labels_file(path, annotator=annotator, skip_bad_lines=skip_bad_lines)
    added = store.add_pairs(found.pairs)
    stored = store.import_human_labels(found.labels, importer)
    return LabelImport(found, hh, added, stored, len(found.labels) - stored)


def _is_json_lines(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def _rows(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    if not path.exists():
        raise PairFileError(f"{path}: no such file")
    if _is_json_lines(path):
        yield from _json_lines(path)
    elif path.suffix == ".csv":
        yield from csv_rows(path, PairFileError)
    else:
        raise PairFileError(f"{path}: unknown format {path.suffix!r} (use .jsonl, .jsonl.gz or .csv)")


def _json_lines(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    if not path.exists():
        raise PairFileError(f"{path}: no such file")
    for n, line in enumerate(read_text(path, PairFileError).split("\n"), start=1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, PairFileError(f"not valid JSON ({exc.msg})")


def _require(row, names: tuple[str, ...]) -> dict[str, str]:
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise PairFileError(f"expected an object, found {type(row).__name__}")
    missing = [n for n in names if not isinstance(row.get(n), str) or not row[n].strip()]
    if missing:
        raise PairFileError(f"missing or empty {', '.join(repr(m) for m in missing)}")
    return {n: row[n] for n in names}


def _stop_on_problems(problems: list[str], skip: bool, path: Path) -> None:
    if problems and not skip:
        shown = "\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise PairFileError(f"{len(problems)} bad line(s) in {path} (skip bad lines to go without them):\n{shown}")


# --- SL-CAI: first answer versus final revision ----------------------------------------------------


def sl_cai_pairs(
    store, *, run_id: str | None = None, constitution_version: str | None = None, max_round: int | None = None
) -> list[Pair]:
    """Each trace's first answer against its last revision (up to `max_round`); traces whose revision
    is the first answer unchanged give no pair. Operators only (pairs are what a judge or trainer reads)."""
    require_operator("make pairs")
    steps = store.final_steps(constitution_version=constitution_version, max_round=max_round, run_id=run_id)
    pairs = []
    for row in steps.itertuples():
        initial, revision = row.initial.strip(), row.revision.strip()
        if initial == revision:
            continue
        revision_first = _better_goes_first(row.prompt, revision, initial)
        a, b = (revision, initial) if revision_first else (initial, revision)
        names = (f"revision {row.round}", "initial") if revision_first else ("initial", f"revision {row.round}")
        pairs.append(Pair(pair_id_for(row.prompt, a, b), row.prompt, a, b, "sl-cai", row.trace_id, row.round, *names))
    return pairs


# --- sampled: K answers per prompt -----------------------------------------------------------------


@dataclass
class SampleConfig(CheckedConfig):
    prompts: str = field(metadata={"help": "Prompt source: .jsonl/.csv/.txt, a datasets folder, or hf:NAME[:SPLIT]."})
    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Model spec that answers the prompts.", "model_spec": True}
    )
    k: int = field(default=2, metadata={"help": "Answers sampled per prompt (a pair needs 2).", "min": 2})
    pairing: Literal["all", "adjacent"] = field(
        default="all", metadata={"help": "all: every two of the K answers; adjacent: answer i with answer i+1."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens per answer.", "min": 1})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (above 0, or all K agree)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts.", "min": 1})
    chunk_size: int = field(default=16, metadata={"help": "Prompts sampled together (K answers each).", "min": 1})
    skip_bad_lines: bool = field(default=False, metadata={"help": "Skip bad prompt lines instead of stopping."})
    tracker: TrackerChoice = tracker_field()
    run_id: str | None = field(
        default=None, metadata={"help": "Name of the run; by default a hash of everything above, so rerunning resumes."}
    )


def _pairs_of(config: SampleConfig, run_id: str, sample: dict) -> list[Pair]:
    responses = sample["responses"]
    if config.pairing == "adjacent":
        indices = [(i, i + 1) for i in range(len(responses) - 1)]
    else:
        indices = list(itertools.combinations(range(len(responses)), 2))
    return [
        Pair(
            pair_id_for(sample["prompt"], responses[i], responses[j]),
            sample["prompt"],
            responses[i],
            responses[j],
            "sampled",
            run_id,
            sample["index"],
            f"sample {i}",
            f"sample {j}",
        )
        for i, j in indices
        if responses[i].strip() != responses[j].strip()  # the same answer twice is no comparison
    ]


def _prompts(config: SampleConfig):
    return load_prompts(config.prompts, on_bad_line="skip" if config.skip_bad_lines else "stop", limit=config.limit)


def _plan(config: SampleConfig, workspace: Workspace) -> Plan:
    return Plan(config.model, {"prompts": _prompts(config).digest})


class SampleWork:
    """K answers per prompt, a batch of `chunk_size` prompts at a time; `done` counts prompts.

    Each prompt's K answers are spooled as one line of `samples.jsonl` before its pairs: a kill between
    the two leaves answers whose pairs the next run derives again, identically, instead of sampling anew."""

    unit = "prompt"

    def __init__(self, job: JobFolder, config: SampleConfig, workspace: Workspace, backend: Backend | None = None):
        self.job, self.config, self.workspace, self.backend = job, config, workspace, backend
        self.engine = ""
        self.prompts = _prompts(config).prompts
        self.samples = {s["prompt_id"]: s for s in job.read("samples")}
        self.stored = {p["pair_id"] for p in job.read("pairs")}
        self._spool_pairs(list(self.samples.values()))

    def total(self) -> int:
        return len(self.prompts)

    def done(self) -> int:
        return len(self.samples)

    def batches(self):
        todo = [(i, p) for i, p in enumerate(self.prompts) if p.id not in self.samples]
        for start in range(0, len(todo), self.config.chunk_size):
            yield todo[start : start + self.config.chunk_size]

    def step(self, chunk) -> None:
        config = self.config
        if not self.engine:
            self.backend = self.backend or load_backend(config.model, self.workspace)
            self.job.record_engines(policy=self.backend)
            self.engine = engine_name(self.backend)
        params = SamplingParams(
            config.max_new_tokens, config.temperature, config.top_p, config.seed + 7919 * chunk[0][0]
        )
        chats = [[{"role": "user", "content": p.prompt}] for _, p in chunk for _ in range(config.k)]
        answers = self.backend.generate(chats, params)
        new = [
            {
                "prompt_id": p.id,
                "index": i,
                "prompt": p.prompt,
                "responses": [a.text for a in answers[n * config.k : (n + 1) * config.k]],
            }
            for n, (i, p) in enumerate(chunk)
        ]
        self.job.append("samples", new)
        self.samples.update((s["prompt_id"], s) for s in new)
        self._spool_pairs(new)

    def _spool_pairs(self, new_samples: list[dict]) -> None:
        fresh = [
            p for s in new_samples for p in _pairs_of(self.config, self.job.run_id, s) if p.pair_id not in self.stored
        ]
        self.job.append("pairs", [to_row(p) for p in fresh])
        self.stored.update(p.pair_id for p in fresh)


SAMPLE = JobKind("pairs", SampleConfig, _plan, SampleWork, "sampling")
