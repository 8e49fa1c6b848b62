"""Datasets out of the store, in the formats TRL reads.

- `sft`: `{"messages": [user, assistant]}`: the final revision as the answer (SL-CAI's training data).
- `prompt_completion`: `{"prompt": [user], "completion": [assistant]}`: the same, with the loss on
  the completion only.
- `pairs`: `{"prompt": [user], "chosen": [revision], "rejected": [initial]}`: revision versus the
  first answer, for DPO or a reward model.
Each row also carries `trace_id`, `constitution_version` and `round`, so any example can be traced
back to the text that produced it.
- `preferences`: `{"prompt": [turns], "chosen": [assistant], "rejected": [assistant]}` from labelled
  pairs (a judge run's soft labels, or people's labels), with `soft_label` (P(chosen is better)),
  `confidence` (|2 P - 1|), `pair_id`, `labels` (the run id, or "human") and which P they read: `probability`
  ("raw" or "calibrated") and `calibration` (its id); filtered by confidence.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import pandas as pd

from .auth import require_operator
from .label_gate import Gate, GateRule
from .label_gate import gate as label_gate
from .pairs import transcript_messages
from .store import Store
from .workspace import Workspace, replace_folder, write_file_atomically

ExportKind = Literal["sft", "prompt_completion", "pairs", "preferences"]
ExportFormat = Literal["jsonl", "parquet", "hf"]
KINDS: tuple[str, ...] = ("sft", "prompt_completion", "pairs", "preferences")
FORMATS: tuple[str, ...] = ("jsonl", "parquet", "hf")
SUFFIXES = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}  # "hf" is a folder


@dataclass(frozen=True)
class ExportFilter:
    """Which rows an export holds, the same for the rows and their count. SFT data and SL-CAI pairs: by
    constitution version, last round and generation run (`run_id`). Preferences: by label run (`run_id`, see
    `preference_rows`), confidence, calibration, label gate, and `raw_labels` (the judge's raw P)."""

    constitution_version: str | None = None
    max_round: int | None = None
    run_id: str | None = None
    min_confidence: float = 0.0
    calibration: str | None = None
    gate: GateRule | Gate | None = None
    raw_labels: bool = False

    def final_steps(self, kind: ExportKind) -> dict:
        """`Store.final_steps`' filters for a trace export: pairs need a revision that changed the answer."""
        return {
            "constitution_version": self.constitution_version,
            "max_round": self.max_round,
            "run_id": self.run_id,
            "revised_only": kind == "pairs",
        }


def export_rows(store: Store, kind: ExportKind, filters: ExportFilter = ExportFilter()) -> pd.DataFrame:
    if kind == "preferences":
        return preference_rows(store, filters)
    steps = store.final_steps(**filters.final_steps(kind))
    user = [[{"role": "user", "content": p}] for p in steps.prompt]
    revision = [[{"role": "assistant", "content": r}] for r in steps.revision]
    meta = {"trace_id": steps.trace_id, "constitution_version": steps.constitution_version, "round": steps["round"]}
    if kind == "sft":
        data = {"messages": [u + r for u, r in zip(user, revision, strict=True)]}
    elif kind == "prompt_completion":
        data = {"prompt": user, "completion": revision}
    elif kind == "pairs":
        data = {
            "prompt": user,
            "chosen": revision,
            "rejected": [[{"role": "assistant", "content": i}] for i in steps.initial],
        }
    else:
        raise ValueError(f"unknown export kind {kind!r}; choose one of {', '.join(KINDS)}")
    return pd.DataFrame({**data, **{k: list(v) for k, v in meta.items()}})


def export_count(store: Store, kind: ExportKind, filters: ExportFilter = ExportFilter()) -> int:
    """How many rows `export_rows` gives, counted by the database without making them (a page shows it at every
    redraw)."""
    if kind == "preferences":
        run_id, weights = _preference_labels(store, filters)
        if run_id is None:
            return 0
        return store.count_pair_preferences(
            run_id, filters.min_confidence, filters.calibration, weights, raw=filters.raw_labels
        )
    return store.count_final_steps(**filters.final_steps(kind))


PREFERENCE_COLUMNS = [
    "prompt",
    "chosen",
    "rejected",
    "soft_label",
    "confidence",
    "pair_id",
    "labels",
    "probability",
    "calibration",
]


def preference_rows(store: Store, filters: ExportFilter = ExportFilter()) -> pd.DataFrame:
    """Chosen/rejected pairs from one judge run's soft labels (`filters.run_id`; the latest label run when unset),
    or from people's labels (`run_id="human"`: P(a better) is the share of a among a/b labels). A pair
    whose P is exactly 0.5, or whose confidence is below `min_confidence`, is left out. `calibration`: a
    stored calibration's id (`cai calibrate`) to read the judge's labels through; without one, the calibrated P
    a run labelled through a calibration stored is read, unless `raw_labels`. Each row says which it read. `gate`:
    weigh each principle's labels by its audit against people (`label_gate`): a rule to decide it by, or a decision
    already taken; people's own labels are never gated."""
    run_id, weights = _preference_labels(store, filters)
    if run_id is None:
        return pd.DataFrame(columns=PREFERENCE_COLUMNS)
    rows = store.pair_preferences(run_id, filters.min_confidence, filters.calibration, weights, raw=filters.raw_labels)
    a_wins = rows.p > 0.5
    return pd.DataFrame(
        {
            "prompt": [transcript_messages(p) for p in rows.prompt],
            "chosen": [[{"role": "assistant", "content": t}] for t in rows.response_a.where(a_wins, rows.response_b)],
            "rejected": [[{"role": "assistant", "content": t}] for t in rows.response_b.where(a_wins, rows.response_a)],
            "soft_label": rows.p.where(a_wins, 1 - rows.p).astype(float),
            "confidence": (2 * rows.p - 1).abs().astype(float),
            "pair_id": rows.pair_id,
            "labels": run_id,
            "probability": ["raw" if c is None else "calibrated" for c in rows.calibration],
            "calibration": list(rows.calibration),
        }
    )


def _preference_labels(store: Store, filters: ExportFilter) -> tuple[str | None, dict[str, float] | None]:
    """The labels preference rows are made of (None: there are none yet) and each principle's weight there (the
    gate's; None: unweighted), for `preference_rows` and its count alike."""
    if not 0.0 <= filters.min_confidence <= 1.0:
        raise ValueError(f"min confidence {filters.min_confidence}: expected a number from 0 to 1")
    gate = filters.gate
    run_id = filters.run_id or store.latest_label_run()
    if run_id is None:
        return None, None
    if isinstance(gate, GateRule) and run_id != "human":
        gate = label_gate(store, run_id, gate)
    return run_id, gate.weights if isinstance(gate, Gate) and run_id != "human" else None


def read_probability(rows: pd.DataFrame) -> str:
    """Which P(a better) preference rows read, in words: raw, or calibrated by which calibration(s)."""
    used = sorted(str(c) for c in rows.calibration.dropna().unique())
    raw = int(rows.calibration.isna().sum())
    shown = [f"calibrated by {c}" for c in used] + ([f"raw ({raw} pairs)" if used else "raw"] if raw else [])
    return ", ".join(shown)


def export_path(workspace: Workspace, kind: ExportKind, fmt: ExportFormat) -> Path:
    """Where an export goes unless told otherwise: DATA_DIR/exports/KIND(.jsonl|.parquet| a folder for hf)."""
    return workspace.exports_dir / f"{kind}{SUFFIXES[fmt]}"


def write_export(rows: pd.DataFrame, path: str | Path, fmt: ExportFormat) -> Path:
    """Write rows as JSON lines, Parquet, or a `datasets` folder (`save_to_disk`), whole or not at all, replacing
    (not following) a symbolic link at `path`. Operators only."""
    require_operator("export data")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        import datasets

        dataset = datasets.Dataset.from_pandas(rows, preserve_index=False)
        return replace_folder(path, lambda folder: dataset.save_to_disk(str(folder)))
    return write_file_atomically(path, lambda out: _write_file(rows, out, fmt))


def export_bytes(rows: pd.DataFrame, fmt: ExportFormat) -> bytes:
    """The file `write_export` would write, as bytes (a download); a `datasets` folder is no single file.
    Operators only."""
    require_operator("export data")
    buffer = io.BytesIO()
    _write_file(rows, buffer, fmt)
    return buffer.getvalue()


def _write_file(rows: pd.DataFrame, target: BinaryIO, fmt: ExportFormat) -> None:
    if fmt == "jsonl":
        rows.to_json(target, orient="records", lines=True, force_ascii=False)
    elif fmt == "parquet":
        rows.to_parquet(target, index=False)
    else:
        raise ValueError(f"unknown export format {fmt!r} for one file; choose jsonl or parquet")


def load_export(path: str | Path):
    """Load any export back as a `datasets.Dataset` (what TRL's trainers take)."""
    import datasets

    path = Path(path)
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    return datasets.Dataset.from_json(str(path))
