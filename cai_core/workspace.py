"""Where the workbench keeps its files: one data folder holding the database, job spools,
converted models and exports. `CAI_DATA_DIR` moves it; `CAI_DB` moves only the database.

The browser may name files only inside the workspace (`Workspace.resolve_browser_path`): whoever reaches the
app's port must not read, create or overwrite files elsewhere on the server. The CLI takes any path: its user
owns the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# A hub id as the browser may name it (`owner/name`): no path separators beyond the one, no `.`/`..` parts.
HUB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)?")
# A hub dataset must name its owner: a bare name may be one of `datasets`' packaged builders (text, json, csv,
# parquet, ...), which read whatever files lie in the server's working folder.
HUB_DATASET_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*/[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class OutsideWorkspace(ValueError):
    """A path named in the browser that lies outside the workspace, or is not the kind of file asked for."""


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
    def recipes_dir(self) -> Path:
        """The recipes the app offers (the operator's choice: the browser picks among them, never types a path)."""
        return Path(os.environ.get("CAI_RECIPES_DIR", PROJECT_ROOT / "recipes"))

    @property
    def demo_prompts(self) -> Path:
        return PROJECT_ROOT / "data" / "demo_prompts.jsonl"

    @property
    def browser_roots(self) -> tuple[Path, ...]:
        """The folders a path typed in the browser may lie in: the data folder, the project's data/ and
        constitutions/ (each with symlinks followed, as the path is)."""
        folders = (self.root, PROJECT_ROOT / "data", self.constitutions_dir, self.models_dir)
        return tuple(dict.fromkeys(folder.resolve() for folder in folders))

    def resolve_browser_path(self, text: str | os.PathLike, *, suffixes: tuple[str, ...] = ()) -> Path:
        """A path typed in the browser, made absolute (relative to the project folder, symlinks followed),
        or `OutsideWorkspace` when it lies outside `browser_roots`. With `suffixes`, a path that is not a
        folder must end in one of them (a database named `x.pth` in site-packages would run at Python's start)."""
        typed = str(text).strip()
        if not typed:
            raise OutsideWorkspace("no path given")
        path = Path(typed).expanduser()
        path = (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
        roots = self.browser_roots
        if not any(path.is_relative_to(root) for root in roots):
            raise OutsideWorkspace(
                f"{typed}: outside the workspace ({', '.join(map(str, roots))}); from the browser, name a file "
                "inside it or upload one"
            )
        if suffixes and not path.is_dir() and path.suffix not in suffixes:
            raise OutsideWorkspace(f"{typed}: expected a {' or '.join(suffixes)} file")
        return path

    def browser_write_path(self, path: Path) -> Path:
        """`path`, a file or folder the browser writes inside the data folder, once its folder exists, or
        `OutsideWorkspace` when that folder, or one between it and the data folder, is a symbolic link: a write
        from the browser never follows one out. Write it with `write_file_atomically` (or `replace_folder`),
        which replace a link planted at `path` itself instead of following it."""
        folder = self.root
        for part in path.parent.absolute().relative_to(self.root.absolute()).parts:
            folder = folder / part
            if folder.is_symlink():  # a dangling one too: mkdir would fail on it, or a later link follow it
                raise OutsideWorkspace(
                    f"{folder}: a symbolic link (to {os.readlink(folder)}); the app writes only into real folders "
                    f"of {self.root}"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def resolve_browser_source(self, text: str, *, suffixes: tuple[str, ...] = ()) -> str:
        """A data source typed in the browser: `hf:OWNER/NAME[:SPLIT]` (a hub id, never a local path, which
        `datasets` would also accept there) or a path inside the workspace (`resolve_browser_path`)."""
        typed = text.strip()
        if typed.startswith("hf:"):
            name = typed.removeprefix("hf:").partition(":")[0]
            if not HUB_DATASET_ID.fullmatch(name) or (PROJECT_ROOT / name).exists() or Path(name).exists():
                builder = " (a `datasets` builder that reads the server's own files)" if _packaged(name) else ""
                raise OutsideWorkspace(
                    f"{typed}: from the browser, hf: names a hub dataset as OWNER/NAME, e.g. hf:allenai/xstest; "
                    f"{name!r} is not one{builder}"
                )
            return typed
        return str(self.resolve_browser_path(typed, suffixes=suffixes))


def _packaged(name: str) -> bool:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return name in _PACKAGED_DATASETS_MODULES


def write_file_atomically(path: Path, write: Callable[[BinaryIO], object], *, mode: int | None = None) -> Path:
    """Write a file through a temporary one created beside it (O_EXCL, O_NOFOLLOW), synced, then renamed over it:
    a symbolic link planted at `path` is replaced, never written through, and nobody reads half a file, even after
    a crash. The file gets `mode`, else keeps the mode of the one it replaces (a new one is 0644), not mkstemp's
    0600."""
    if mode is None:
        try:
            mode = stat.S_IMODE(os.lstat(path).st_mode) if not path.is_symlink() else 0o644
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_folder(path: Path, write: Callable[[Path], object]) -> Path:
    """`write_file_atomically` for a folder: filled as a new one beside `path`, then put in its place (a link
    there is removed, never followed; a folder there is removed once the new one stands)."""
    fresh = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(fresh)
    except BaseException:
        shutil.rmtree(fresh)
        raise
    old = None
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        old = path.rename(path.with_name(f"{fresh.name}.old"))
    os.replace(fresh, path)
    if old is not None:
        shutil.rmtree(old)
    return path
