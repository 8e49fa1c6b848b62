"""`cai app` (the browser app) and `cai setup` (the default model and the database)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ..backends import ensure_default_model
from ..store import Store
from ..workspace import PROJECT_ROOT, Workspace


def cmd_app(args, ws: Workspace) -> int:
    env = {**os.environ, "CAI_DATA_DIR": str(ws.root)}
    if ws.db_override:
        env["CAI_DB"] = str(ws.db_override)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PROJECT_ROOT / "app.py"),
        "--server.port",
        str(args.port),
        "--server.headless",
        str(args.headless).lower(),
        "--browser.gatherUsageStats",
        "false",
    ]
    return subprocess.call(command, env=env)


def cmd_setup(args, ws: Workspace) -> int:
    ensure_default_model(ws.models_dir)
    with Store.open(ws) as store:
        print(f"database ready at {ws.db_path} (schema version {store.schema_version})")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("app", help="Start the browser app (Streamlit).")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_app)
    p = sub.add_parser("setup", help="Convert the default model and create the database.")
    p.set_defaults(func=cmd_setup)
