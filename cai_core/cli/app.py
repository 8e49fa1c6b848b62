"""`cai app` (the browser app) and `cai setup` (the default model and the database)."""

from __future__ import annotations

import argparse

from ..auth import ANNOTATOR, ROLES, add_login
from ..backends import ensure_default_model
from ..frontdoor_limits import MAX_UPLOAD_MB
from ..serve import DEFAULT_HOST, serve
from ..store import Store
from ..workspace import Workspace


def cmd_app(args, ws: Workspace) -> int:
    if args.add_login:
        password = add_login(ws.root, args.add_login, args.role)
        print(f"{args.add_login} ({args.role})'s password (kept only as a hash): {password}")
        return 0
    return serve(ws, args.host, args.port, args.headless, args.max_upload_mb)


def cmd_setup(args, ws: Workspace) -> int:
    ensure_default_model(ws.models_dir)
    with Store.open(ws) as store:
        print(f"database ready at {ws.db_path} (schema version {store.schema_version})")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("app", help="Start the browser app (Streamlit), on 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default=DEFAULT_HOST, help="Address to listen on; any but 127.0.0.1 asks for a login.")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--add-login", metavar="NAME", help="Create (or reset) a login and print its password.")
    p.add_argument(
        "--role",
        choices=ROLES,
        default=ANNOTATOR,
        help="With --add-login: an annotator annotates and reads; an operator may do everything.",
    )
    p.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help="The largest file a browser may upload.")
    p.add_argument("--headless", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_app)
    p = sub.add_parser("setup", help="Convert the default model and create the database.")
    p.set_defaults(func=cmd_setup)
