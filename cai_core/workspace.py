"""Where the workbench keeps its files: one data folder holding the database, job spools,
converted models and exports. `CAI_DATA_DIR` moves it; `CAI_DB` moves only the database."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workspace:
    root: Path
    db_override: Path | None = None

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None, db: str | os.PathLike | None = None) -> Workspace:
        root = root or os.environ.get("CAI_DATA_DIR") or PROJECT_ROOT / "data"
        db = db or os.environ.get("CAI_DB")
        return cls(Path(root), Path(db) if db else None)

    def cli_args(self) -> list[str]:
        """The `cai` options that point a child process at this workspace."""
        return ["--data-dir", str(self.root), *(["--db", str(self.db_override)] if self.db_override else [])]

    @property
    def db_path(self) -> Path:
        return self.db_override or self.root / "cai.duckdb"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def constitutions_dir(self) -> Path:
        return Path(os.environ.get("CAI_CONSTITUTIONS_DIR", PROJECT_ROOT / "constitutions"))

    @property
    def demo_prompts(self) -> Path:
        return PROJECT_ROOT / "data" / "demo_prompts.jsonl"
