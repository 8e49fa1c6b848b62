"""Every third-party module the code imports is declared: the app's in requirements.txt (the optional vLLM engine in
requirements-vllm.txt), the tests' in requirements-dev.txt. A package that only arrives as another's dependency
can vanish with that package's next release, and a fresh `make setup` then fails where this machine did not."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"cai_core", "ui", "pages", "tests", "benchmarks", "app"}
APP_CODE = ("cai_core", "pages", "ui", "app.py")


def imported_modules(paths: list[Path]) -> dict[str, str]:
    """Top-level name of each absolute, third-party import in the files under `paths` -> one file importing it."""
    found = {}
    for path in paths:
        for file in sorted([path] if path.is_file() else path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, str(file.relative_to(ROOT)))
    return found


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared(requirements: str) -> set[str]:
    """The distributions a requirements file names, with the files it includes (`-r`)."""
    names = set()
    for line in (ROOT / requirements).read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= declared(line.removeprefix("-r ").strip())
        elif line:
            names.add(normalise(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0]))
    return names


def undeclared(modules: dict[str, str], names: set[str]) -> list[str]:
    distributions = packages_distributions()
    return [
        f"{module} (imported by {file}; installed as {', '.join(distributions.get(module, ['nothing']))})"
        for module, file in sorted(modules.items())
        if not names.intersection(map(normalise, distributions.get(module, [])))
    ]


def test_the_apps_imports_are_declared_in_requirements_txt():
    modules = imported_modules([ROOT / p for p in APP_CODE])
    assert "streamlit" in modules and "trl" in modules  # the scan sees the imports it is meant to
    assert undeclared(modules, declared("requirements.txt") | declared("requirements-vllm.txt")) == []


def test_the_tests_imports_are_declared_in_requirements_dev_txt():
    modules = imported_modules([ROOT / "tests"])
    assert "pytest" in modules
    assert undeclared(modules, declared("requirements-dev.txt")) == []


def test_test_only_packages_stay_out_of_requirements_txt():
    app = set(imported_modules([ROOT / p for p in APP_CODE]))
    distributions = packages_distributions()
    test_only = {
        normalise(d) for module in set(imported_modules([ROOT / "tests"])) - app for d in distributions.get(module, [])
    }
    # tokenizers is imported by the tests' tiny model only, but transformers needs it at run time: pinned for it;
    # tensorboard likewise, which the app writes through torch.utils.tensorboard and the tests read directly
    assert sorted(test_only & declared("requirements.txt") - {"tokenizers", "tensorboard"}) == []
