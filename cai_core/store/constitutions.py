"""Constitution versions (the text behind every hash a record names) and the save history of each file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..records import check_note, now


class ConstitutionQueries:
    def record_constitution(self, constitution, path: str | Path | None = None, note: str = "") -> str:
        """Remember a version's text; with a path, also log it as a save of that file."""
        check_note("note", note, f"save of {Path(path).name if path else constitution.name}")
        version = constitution.version
        with self._write():
            self._exec(
                "INSERT OR IGNORE INTO constitution_versions VALUES (?, ?, ?, ?)",
                [version, constitution.name, constitution.to_yaml(), now()],
            )
            if path is not None:
                next_id = self._one("SELECT coalesce(max(save_id), 0) + 1 FROM constitution_saves")[0]
                self._exec(
                    "INSERT INTO constitution_saves VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [next_id, str(Path(path).resolve()), constitution.name, version, constitution.to_yaml(), note]
                    + [now()],
                )
        return version

    def constitution_history(self, path: str | Path) -> pd.DataFrame:
        return self.con.execute(
            "SELECT save_id, version, note, saved_at FROM constitution_saves WHERE path = ? ORDER BY save_id DESC",
            [str(Path(path).resolve())],
        ).df()

    def constitution_text(self, version: str) -> str:
        row = self._one("SELECT content FROM constitution_versions WHERE version = ?", [version])
        if row is None:
            raise KeyError(f"no constitution version {version!r} in {self.path}")
        return row[0]
