"""A run's data, read when the run is prepared: exports from the store, or a file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..workspace import Workspace
from .config import TrainError


def store_rows(ws: Workspace, kind: str, **filters) -> pd.DataFrame:
    """An export (see `cai_core.exports`; FILTERS: an `ExportFilter`'s fields) from the database, after taking in
    finished jobs' records."""
    from ..exports import ExportFilter, export_rows
    from ..store import Store

    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        return export_rows(store, kind, ExportFilter(**filters))


def file_rows(path: str) -> pd.DataFrame:
    from ..exports import load_export

    if not Path(path).exists():
        raise TrainError(f"{path}: no such file or folder", "dataset")
    return load_export(path).to_pandas()


def need_columns(frame: pd.DataFrame, columns: tuple[str, ...], source: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrainError(f"{source}: missing column(s) {', '.join(missing)}; has {', '.join(frame.columns)}", "dataset")
    if frame.empty:
        raise TrainError(f"{source}: no rows", "dataset")
    return frame


def prompt_rows(dataset: str, ws: Workspace) -> pd.DataFrame:
    """Conversational prompts `{"prompt": [user]}` for the algorithms that sample their own answers: the
    store's SL-CAI prompts, or any prompt file."""
    if dataset == "store":
        rows = store_rows(ws, "sft")
        if rows.empty:
            raise TrainError("no prompts in the store: generate SL-CAI traces first, or name a prompt file", "dataset")
        texts = list(dict.fromkeys(m[0]["content"] for m in rows.messages))
        return pd.DataFrame({"prompt": [[{"role": "user", "content": t}] for t in texts]})
    if dataset.endswith((".jsonl", ".csv", ".txt")):
        from ..prompts import load_prompts

        prompts = load_prompts(dataset).prompts
        return pd.DataFrame({"prompt": [[{"role": "user", "content": p.prompt}] for p in prompts]})
    frame = file_rows(dataset)
    if "prompt" not in frame.columns:
        raise TrainError(f"{dataset}: no prompt column", "dataset")
    return frame[["prompt"]]
