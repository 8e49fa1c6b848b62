"""`cai app`: on 127.0.0.1 by default, a login anywhere else, a SIGTERM or a `kill -9` stops the server it
started, and starting on every interface asks nothing of the outside world.

The server is real (`python -m cai_core.cli app`); what it listens on is read from the kernel's socket table."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from cai_core.auth import LOCAL_OPERATOR, LOGINS_FILE, Access, Actor, access_for, add_login, matches
from cai_core.workspace import PROJECT_ROOT

from .browser.harness import SERVER_START_S, free_port

LISTEN = "0A"


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on PORT, from /proc/net/tcp and tcp6 (hex, as the kernel
    writes them: 0100007F is 127.0.0.1, 00000000 every IPv4 interface, all zeros in tcp6 every interface)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == LISTEN and int(hex_port, 16) == port:
                found.add(address)
    return found


def healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok"
    except OSError:
        return False


@contextmanager
def cai_app(tmp_path, *args: str, env: dict | None = None):
    """`cai app` on a free port; yields the process, its port and its output file once the server answers."""
    port = free_port()
    log = tmp_path / "app.log"
    environment = {**os.environ, "CAI_DATA_DIR": str(tmp_path / "data"), **(env or {})}
    command = [sys.executable, "-m", "cai_core.cli", "app", "--port", str(port), *args]
    with open(log, "wb") as out:
        app = subprocess.Popen(command, env=environment, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not healthy(port):
            assert app.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield app, port, log
    finally:
        if app.poll() is None:
            app.kill()
        app.wait()


def test_cai_app_listens_on_localhost_only_and_sigterm_stops_the_server(tmp_path):
    with cai_app(tmp_path) as (app, port, _):
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing on other interfaces
        app.send_signal(signal.SIGTERM)
        status = app.wait(timeout=20)
        deadline = time.monotonic() + 10
        while healthy(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        still_up = healthy(port)
        if still_up:  # the old behaviour: the server outlived `cai app`; stop it before failing
            for pid in server_pids(port):
                os.kill(pid, signal.SIGKILL)
        assert not still_up, "the Streamlit server outlived `cai app`"
        assert status == 0


def server_pids(port: int) -> list[int]:
    """Processes whose command line starts Streamlit on PORT (to clean up an orphaned server)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in b" ".join(cmdline) and str(port).encode() in cmdline and proc.name.isdigit():
            pids.append(int(proc.name))
    return pids


def streamlit_child(app) -> int:
    return int(Path(f"/proc/{app.pid}/task/{app.pid}/children").read_text().split()[0])


def test_another_host_asks_for_a_login_with_a_printed_token(tmp_path):
    with cai_app(tmp_path, "--host", "0.0.0.0") as (app, port, log):
        deadline = time.monotonic() + 10
        while "token=" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        token = re.search(r"\?token=([\w-]+)", log.read_text()).group(1)
        assert listening_addresses(port) == {"00000000"}  # the front door
        streamlit = streamlit_child(app)
        command = (Path("/proc") / str(streamlit) / "cmdline").read_bytes().split(b"\0")
        internal_port = int(command[command.index(b"--server.port") + 1])
        assert listening_addresses(internal_port) == {"0100007F"}  # Streamlit itself: this machine only
        environ = (Path("/proc") / str(streamlit) / "environ").read_bytes().split(b"\0")
        assert not any(token.encode() in variable for variable in environ)  # only the front door checks it
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=20) == 0


def test_kill_9_of_cai_app_stops_its_server(tmp_path):
    """Before: Streamlit, orphaned, kept listening on the port after `kill -9` of `cai app`."""
    with cai_app(tmp_path) as (app, port, _):
        app.kill()
        app.wait()
        deadline = time.monotonic() + 20
        while listening_addresses(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphans = listening_addresses(port)
        for pid in server_pids(port) if orphans else ():  # the old behaviour: clean up before failing
            os.kill(pid, signal.SIGKILL)
        assert not orphans, "the Streamlit server outlived `cai app`"


def test_serving_every_interface_asks_no_outside_service_for_this_machine_s_address(tmp_path):
    """Streamlit, on a wildcard address and headless, fetched checkip.amazonaws.com at start. Every request it
    makes to the outside goes through the proxy the environment names: here a socket that counts them."""
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.2)
    proxy = f"http://127.0.0.1:{trap.getsockname()[1]}"
    env = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy}
    env |= {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    asked = []
    with trap, cai_app(tmp_path, "--host", "0.0.0.0", env=env):
        deadline = time.monotonic() + 5  # the lookup comes as the server starts; give it time to show
        while time.monotonic() < deadline:
            try:
                conn, _ = trap.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                asked.append(conn.recv(200).split(b"\r\n")[0].decode(errors="replace"))
    assert asked == [], f"the server asked the outside world: {asked}"


def test_logins_keep_only_hashes_and_name_the_annotator(tmp_path):
    password = add_login(tmp_path, "ada")
    stored = (tmp_path / LOGINS_FILE).read_text()
    assert password not in stored and json.loads(stored)["ada"]["hash"].startswith("scrypt$")
    access = Access(True, None, tmp_path / LOGINS_FILE)
    assert access.login("ada", password) == Actor("ada", "annotator")
    assert access.login("ada", password + "x") is None
    assert access.login("bob", password) is None
    assert access.login("", password) is None  # no token set: an empty name logs in as nobody


def test_the_token_is_generated_where_the_operator_set_none(tmp_path, monkeypatch):
    monkeypatch.delenv("CAI_APP_TOKEN", raising=False)
    assert access_for("127.0.0.1", tmp_path) == (Access(False), None)
    access, token = access_for("0.0.0.0", tmp_path)
    assert access.required and len(token) >= 32 and matches(token, access.token_hash)
    assert access.login("", token) == LOCAL_OPERATOR and access.login("", "guess") is None
    monkeypatch.setenv("CAI_APP_TOKEN", "chosen-by-the-operator")
    access, token = access_for("127.0.0.1", tmp_path)  # a token set asks for it even on localhost
    assert access.required and token is None and access.login("", "chosen-by-the-operator") == LOCAL_OPERATOR
