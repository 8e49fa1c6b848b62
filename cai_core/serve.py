"""Serve the browser app: `streamlit run app.py` on 127.0.0.1 by default; where a login is asked for (any other
address, or a token set), Streamlit on 127.0.0.1 behind the front door (`cai_core.frontdoor`), which `cai app`
serves on the address asked for.

`cai app` is a parent of the Streamlit process: a SIGTERM (or SIGINT, SIGHUP) to it stops the server too, and
its exit status is the server's. A `kill -9`, which no handler sees, reaches the server through the kernel:
the child asks for a SIGTERM when its parent dies (PR_SET_PDEATHSIG), so it never outlives `cai app`.

The engine services (`cai_core.engine_service`) that the app's pages and jobs start on demand belong to the app:
they are stopped when it stops. One left by an app that was killed is found and reused by the next.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys

from . import engine_service
from .auth import IDENTITY_KEY_ENV, TOKEN_ENV, access_for
from .endpoints import ENDPOINTS_ENV, endpoints_file
from .frontdoor_limits import MAX_UPLOAD_MB, Limits
from .workspace import PROJECT_ROOT, Workspace

DEFAULT_HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def streamlit_command(host: str, port: int, headless: bool = True, max_upload_mb: int = MAX_UPLOAD_MB) -> list[str]:
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
        "--server.maxUploadSize",
        str(max_upload_mb),
        "--browser.gatherUsageStats",
        "false",
        # Set by hand, this is the address Streamlit prints and trusts as an origin; left unset on a wildcard
        # address, a headless Streamlit asks checkip.amazonaws.com for this machine's public IP at start.
        "--browser.serverAddress",
        host if host not in ("0.0.0.0", "::") else "localhost",
    ]


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: a SIGTERM when `cai app` dies, however it dies. Linux only (elsewhere the
    handlers in `serve` are all there is)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    workspace: Workspace,
    host: str = DEFAULT_HOST,
    port: int = 8501,
    headless: bool = True,
    max_upload_mb: int = MAX_UPLOAD_MB,
) -> int:
    """Run the app until it stops or this process is told to stop; returns the server's exit status."""
    access, token = access_for(host, workspace.root)
    env = {**os.environ, "CAI_DATA_DIR": str(workspace.root), engine_service.OWNER_ENV: "app"}
    env.pop(TOKEN_ENV, None)  # only the front door checks it; the pages and their jobs need it not
    # The endpoints (and their keys) stay this data folder's, whichever folder the browser switches to.
    env[ENDPOINTS_ENV] = str(endpoints_file(workspace.root).resolve())
    if workspace.db_override:
        env["CAI_DB"] = str(workspace.db_override)
    identity_key = secrets.token_urlsafe(32)
    if access.required:
        env[IDENTITY_KEY_ENV] = identity_key
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        where = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        print(f"The app asks for a login. Open {where}", flush=True)
        if not token:
            print(f"(the token is the one in ${TOKEN_ENV})", flush=True)
        app_host, app_port = DEFAULT_HOST, free_local_port()
    else:
        env.pop(IDENTITY_KEY_ENV, None)
        app_host, app_port = host, port
    parent = os.getpid()
    server = subprocess.Popen(
        streamlit_command(app_host, app_port, headless, max_upload_mb),
        env=env,
        cwd=PROJECT_ROOT,
        preexec_fn=lambda: _die_with_parent(parent),  # noqa: PLW1509 - only a prctl and a getppid, no locks
    )
    try:
        if access.required:
            from .frontdoor import FrontDoor  # the web stack, loaded only where it serves

            door = FrontDoor(access, app_port, identity_key, Limits(max_upload_mb=max_upload_mb))
            return _serve_front_door(server, door, host, port)
        return _wait_for(server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        engine_service.stop(workspace, owner="app")


def _wait_for(server: subprocess.Popen) -> int:
    def stop(signum, _frame) -> None:
        server.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_front_door(server: subprocess.Popen, front_door, host: str, port: int) -> int:
    """Serve the front door until Streamlit exits or a signal asks to stop; then stop Streamlit."""
    from .frontdoor import run

    door = run(front_door, host, port)

    def stop(signum=None, _frame=None) -> None:
        door.should_exit = True

    # uvicorn takes SIGINT and SIGTERM while it serves, then restores these handlers and raises the signal
    # again: with ours in place that second delivery only asks again to stop, and Streamlit is stopped below.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    async def main() -> None:
        async def watch() -> None:
            while server.poll() is None:
                await asyncio.sleep(0.5)
            stop()

        watcher = asyncio.create_task(watch())
        await door.serve()
        watcher.cancel()

    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if server.poll() is None:
        server.terminate()
    return server.wait(timeout=30)
