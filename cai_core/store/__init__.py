"""The DuckDB store: the only package that reads or writes SQL. It owns the schema and its migrations.

One `Store` object holds one connection; each concern adds its methods to it from its own module:
`core` (open, migrate, the write lock), `schema` (the migrations), `ingest` (jobs' records in),
`constitutions`, `traces` (traces, their steps and people's verdicts), `labels` (pairs, AI and human labels,
the annotation queue), `runs` (jobs, training registry, trained models, evaluation runs), `agreement` (the
counting queries of the agreement dashboard) and `audits` (people's answers on the evaluation's graders).

Connections are short-lived (`with Store.open(ws) as store:`): DuckDB lets one process hold a file, so
nobody should hold it for long. Background jobs never open it at all; they spool records into their
folders and `ingest` copies them in, idempotently. Inside one process every write takes the database's
write lock (`StoreCore._write`), so that the app's sessions, each on its own connection, never collide.
"""

from __future__ import annotations

from .agreement import AgreementQueries, LabelFilter
from .audits import AUDIT_ANSWERS, GraderAuditQueries, GraderItem, GraderLabel
from .constitutions import ConstitutionQueries
from .core import StoreCore, StoreError
from .ingest import SPOOLED_TABLES, IngestQueries
from .labels import CLAIM_SECONDS, LabelQueries, PairQueue
from .runs import RunQueries
from .schema import MIGRATIONS
from .traces import TraceFilter, TraceQueries


class Store(
    StoreCore,
    IngestQueries,
    ConstitutionQueries,
    TraceQueries,
    LabelQueries,
    RunQueries,
    AgreementQueries,
    GraderAuditQueries,
):
    """Every query of the workbench over one connection (see the modules named in the package docstring)."""


__all__ = [
    "AUDIT_ANSWERS",
    "CLAIM_SECONDS",
    "GraderItem",
    "GraderLabel",
    "MIGRATIONS",
    "PairQueue",
    "SPOOLED_TABLES",
    "LabelFilter",
    "Store",
    "StoreError",
    "TraceFilter",
]
