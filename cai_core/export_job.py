"""Export as a background job (`cai export --background`, the Data page's "Export in the background"): the rows
are read from the store when the job is prepared, by the process that holds the database, and copied into the
job's folder; the job writes them in the export's format, whole or not at all (`exports.write_export`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from .exports import ExportFilter, export_path, export_rows, write_export
from .jobs import JobFolder, JobKind, Plan
from .workspace import Workspace

ROWS = "export_rows"  # the job's input: the rows to write
WRITTEN = "export_written"  # one record once the file is written (not a spooled table: the store ignores it)


@dataclass
class ExportConfig:
    kind: str = field(default="sft", metadata={"help": "sft, prompt_completion, pairs or preferences."})
    format: str = field(default="jsonl", metadata={"help": "jsonl, parquet or hf (a `datasets` folder)."})
    out: str | None = field(default=None, metadata={"help": "Output file; DATA_DIR/exports/KIND by default."})
    constitution_version: str | None = field(default=None, metadata={"help": "Rows of this version only."})
    max_round: int | None = field(default=None, metadata={"help": "Use the revision of this round at most."})
    source_run: str | None = field(default=None, metadata={"help": "The run the rows come from."})
    min_confidence: float = field(default=0.0, metadata={"help": "Preferences only: keep |2 P - 1| at least this."})
    calibration: str | None = field(default=None, metadata={"help": "Preferences only: a calibration's id."})
    gate: bool = field(
        default=False,
        metadata={
            "help": "Preferences only: weigh each principle's AI labels by its agreement with people, by the data "
            "folder's label gate rule (`cai gate`)."
        },
    )
    raw_labels: bool = field(
        default=False,
        metadata={"help": "Preferences only: the judge's raw P, even where its run stored a calibrated one."},
    )
    run_id: str | None = field(default=None, metadata={"help": "The export job's id; by default a hash."})

    def filters(self, ws: Workspace) -> ExportFilter:
        """Which rows the export holds (`gate`: by the data folder's label gate rule)."""
        from .label_gate import load_rule

        return ExportFilter(
            constitution_version=self.constitution_version,
            max_round=self.max_round,
            run_id=self.source_run,
            min_confidence=self.min_confidence,
            calibration=self.calibration,
            gate=load_rule(ws) if self.gate else None,
            raw_labels=self.raw_labels,
        )


def matching_rows(store, config: ExportConfig, ws: Workspace) -> pd.DataFrame:
    """The rows the export writes, or ValueError where none match."""
    rows = export_rows(store, config.kind, config.filters(ws))
    if rows.empty:
        raise ValueError("nothing to export: no rows match (run `cai generate` first, or loosen the filters)")
    return rows


def _plan(config: ExportConfig, ws: Workspace, store=None) -> Plan:
    if store is None:
        from .store import Store

        with Store.open(ws) as opened:
            opened.ingest(ws.runs_dir)
            return _plan(config, ws, opened)
    rows = matching_rows(store, config, ws)
    out = config.out or str(export_path(ws, config.kind, config.format))
    return Plan("", inputs={ROWS: rows.to_dict("records")}, config=replace(config, out=out))


class ExportWork:
    """The copied rows written to the export's file in one batch: a format such as Parquet is written whole."""

    unit = "row"
    engine = ""

    def __init__(self, job: JobFolder, config: ExportConfig, ws: Workspace):
        self.job, self.settings = job, job.spec["config"]  # `out` as the plan resolved it
        self.rows = job.read_input(ROWS)
        self.written = bool(job.read(WRITTEN))

    def total(self) -> int:
        return len(self.rows)

    def done(self) -> int:
        return len(self.rows) if self.written else 0

    def batches(self):
        if not self.written:
            yield self.rows

    def step(self, rows: list[dict]) -> None:
        path = write_export(pd.DataFrame(rows), self.settings["out"], self.settings["format"])
        self.job.append(WRITTEN, [{"path": str(path.resolve()), "rows": len(rows)}])
        self.written = True


EXPORT = JobKind("export", ExportConfig, _plan, ExportWork, "export", input=ROWS, sources=("store",))
