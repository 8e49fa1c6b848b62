"""Serve the browser app: `streamlit run app.py` on 127.0.0.1 by default, with a login on any other address.

`cai app` is a parent of the Streamlit process: a SIGTERM (or SIGINT, SIGHUP) to it stops the server too, and
its exit status is the server's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from .auth import TOKEN_ENV, access_for
from .endpoints import ENDPOINTS_ENV, endpoints_file
from .workspace import PROJECT_ROOT, Workspace

DEFAULT_HOST = "127.0.0.1"


def streamlit_command(host: str, port: int, headless: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PROJECT_ROOT / "app.py"),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        str(headless).lower(),
        "--browser.gatherUsageStats",
        "false",
    ]


def serve(workspace: Workspace, host: str = DEFAULT_HOST, port: int = 8501, headless: bool = True) -> int:
    """Run the app until it stops or this process is told to stop; returns the server's exit status."""
    access, token = access_for(host, workspace.root)
    env = {**os.environ, "CAI_DATA_DIR": str(workspace.root), **access.env()}
    env.pop(TOKEN_ENV, None)  # the pages get its hash; the jobs they start need neither
    # The endpoints (and their keys) stay this data folder's, whichever folder the browser switches to.
    env[ENDPOINTS_ENV] = str(endpoints_file(workspace.root).resolve())
    if workspace.db_override:
        env["CAI_DB"] = str(workspace.db_override)
    if access.required:
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        where = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        print(f"The app asks for a login. Open {where}", flush=True)
        if not token:
            print(f"(the token is the one in ${TOKEN_ENV})", flush=True)
    server = subprocess.Popen(streamlit_command(host, port, headless), env=env, cwd=PROJECT_ROOT)

    def stop(signum, _frame) -> None:
        server.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:
            server.kill()
            server.wait()
