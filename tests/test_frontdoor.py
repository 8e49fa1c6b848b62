"""`cai app --host 0.0.0.0` over the real HTTP and websocket protocols: its front door lets nothing through
without a login cookie (not the app's stream, not an upload, whatever session id is named), caps uploads,
drops the token from the URL with a redirect, and slows down guessing.

One real server for the module (`python -m cai_core.cli app`); figures are printed, never asserted on time."""

from __future__ import annotations

import asyncio
import http.client
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cai_core.auth import Access, Actor, add_login
from cai_core.frontdoor import FrontDoor
from cai_core.frontdoor_limits import Limits

from .test_serve import cai_app

TOKEN = "front-door-test-token-7c21"
UPLOAD_CAP_MB = 1


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    root = tmp_path_factory.mktemp("front-door")
    (root / "data").mkdir()
    passwords = {"ada": add_login(root / "data", "ada")}
    env = {"CAI_APP_TOKEN": TOKEN}
    with cai_app(root, "--host", "0.0.0.0", "--max-upload-mb", str(UPLOAD_CAP_MB), env=env) as (app, port, _):
        yield port, app, passwords


def request(port: int, method: str, path: str, *, headers=None, body=None, client: str = "127.0.0.1"):
    """One request from the address CLIENT (any of 127.0.0.0/8: each is another client to the server)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(client, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def log_in(port: int, name: str = "", secret: str = TOKEN, client: str = "127.0.0.1"):
    """POST the login form; returns (status, headers, cookie header to send back or None)."""
    form = urllib.parse.urlencode({"name": name, "secret": secret, "next": "/"})
    status, headers, _ = request(
        port,
        "POST",
        "/_cai/login",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        client=client,
    )
    cookie = re.match(r"(cai_login=[^;]+)", headers.get("set-cookie", ""))
    return status, headers, cookie.group(1) if cookie else None


def streamlit_rss_mb(app) -> float:
    """The resident memory of the Streamlit process `cai app` started."""
    children = Path(f"/proc/{app.pid}/task/{app.pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def open_stream(port: int, cookie: str | None, session_id: str = "a-session-id-seen-in-a-proxy-log"):
    headers = {"Origin": f"http://127.0.0.1:{port}", **({"Cookie": cookie} if cookie else {})}
    return connect(
        f"ws://127.0.0.1:{port}/_stcore/stream",
        subprotocols=["streamlit", "xsrf-token", session_id],
        additional_headers=headers,
        open_timeout=20,
    )


def test_the_token_in_a_url_logs_in_with_a_redirect_that_drops_it(door):
    port, _, _ = door
    status, headers, _ = request(port, "GET", f"/Traces?token={TOKEN}&tab=2")
    assert status == 303 and headers["location"] == "/Traces?tab=2"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    status, _, page = request(port, "GET", "/Traces?tab=2", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b'<div id="root">' in page  # Streamlit's own page


def test_without_a_login_nothing_passes_the_door(door):
    port, app, _ = door
    status, headers, _ = request(port, "GET", "/Traces")
    assert status == 303 and headers["location"].startswith("/_cai/login?next=%2FTraces")
    status, _, login_page = request(port, "GET", "/_cai/login?next=%22%3E%3Cscript%3E")
    assert status == 200 and b"<script>" not in login_page  # `next` is escaped (and reset to /)
    assert request(port, "GET", "/_stcore/host-config")[0] == 401
    with pytest.raises(InvalidStatus) as refused:
        open_stream(port, None)  # a session id alone: the operator's, from a proxy log, say
    assert refused.value.response.status_code == 403

    before = streamlit_rss_mb(app)
    began = time.perf_counter()
    status = upload_without_reading(port, "/_stcore/upload_file/any-session/any-file", 150 * 2**20)
    after = streamlit_rss_mb(app)
    print(
        f"\nupload of 150 MB with no login: {status} in {time.perf_counter() - began:.2f} s; "
        f"Streamlit's memory {before:.0f} → {after:.0f} MB"
    )
    assert status == 401 and after - before < 20


def upload_without_reading(port: int, path: str, size: int, cookie: str | None = None) -> int:
    """PUT SIZE bytes as fast as the server takes them; returns the status it answers (it may answer and
    close before the body is sent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("PUT", path)
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(size))
    if cookie:
        conn.putheader("Cookie", cookie)
    conn.endheaders()
    chunk = b"\0" * 2**20
    try:
        for _ in range(size // len(chunk)):
            conn.send(chunk)
    except OSError:  # the door answered and closed without reading: what it should do
        pass
    try:
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_login_opens_the_stream_and_an_upload_over_the_cap_is_refused(door):
    port, app, passwords = door
    status, _, cookie = log_in(port, "ada", passwords["ada"])
    assert status == 303 and cookie
    with open_stream(port, cookie) as stream:
        assert stream.subprotocol == "streamlit"
    before = streamlit_rss_mb(app)
    status = upload_without_reading(port, "/_stcore/upload_file/s/f", (UPLOAD_CAP_MB + 1) * 2**20, cookie)
    assert status == 413 and streamlit_rss_mb(app) - before < 20


def test_failed_logins_slow_down_and_a_known_name_refuses_as_fast_as_an_unknown_one(door):
    """Each source address is its own client: the other tests' logins from 127.0.0.1 are not slowed by these
    failures."""
    port, _, _ = door
    timings = {}
    for name in ("ada", "nobody", "ada", "nobody"):  # four failures: under the five free ones
        began = time.perf_counter()
        assert log_in(port, name, "wrong", client="127.0.0.3")[0] == 401
        timings.setdefault(name, []).append(time.perf_counter() - began)
    print(
        f"\nrefusing a wrong password: known name {min(timings['ada']) * 1000:.0f} ms, "
        f"unknown name {min(timings['nobody']) * 1000:.0f} ms"
    )

    began = time.perf_counter()
    statuses = [log_in(port, "ada", "wrong", client="127.0.0.2")[0] for _ in range(7)]
    print(f"7 wrong passwords from one address: {statuses} in {time.perf_counter() - began:.2f} s")
    assert statuses == [401] * 6 + [429]
    status, headers, cookie = log_in(port, "", TOKEN, client="127.0.0.2")
    assert status == 429 and int(headers["retry-after"]) >= 1 and cookie is None  # not even checked
    assert log_in(port, "", TOKEN)[0] == 303  # another address is not slowed


def test_a_login_may_have_only_a_few_uploads_in_flight():
    """In-process (the ASGI app, no server): a third upload while two are under way is refused at once."""
    from starlette.responses import Response

    front = FrontDoor(Access(False), upstream_port=9, identity_key="k", limits=Limits(uploads_in_flight=2))
    response = Response()
    front.start_login(Actor("ada", "annotator"), response)
    cookie = response.headers["set-cookie"].split(";")[0]
    (login,) = front.logins.values()
    login.uploads = 2  # two under way

    async def put() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(front), base_url="http://door") as client:
            return await client.put("/_stcore/upload_file/s/f", content=b"x", headers={"Cookie": cookie})

    # on a thread of its own: in a full run, Playwright's sync API keeps an event loop running on this one
    with ThreadPoolExecutor(1) as thread:
        answer = thread.submit(asyncio.run, put()).result()
    assert answer.status_code == 429 and "at most 2 per login" in answer.text
    assert login.uploads == 2


def app_run(stream) -> tuple[str, str]:
    """Ask the app over its stream for a run of the home page, as the browser does; returns the session id it
    names and every element it drew (protobuf text), once the run has ended."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    ask = BackMsg()
    ask.rerun_script.query_string = ""
    stream.send(ask.SerializeToString())
    session_id, drawn = "", []
    while True:
        message = ForwardMsg()
        message.ParseFromString(stream.recv(timeout=60))
        kind = message.WhichOneof("type")
        if kind == "new_session":
            session_id = message.new_session.initialize.session_id
        elif kind == "delta":
            drawn.append(str(message.delta))
        elif kind == "script_finished":
            return session_id, "\n".join(drawn)


def test_resuming_someone_else_s_session_gives_only_one_s_own_identity(door):
    """The operator's session id, resumed within Streamlit's 120 s by a browser logged in as ada: the pages
    read the identity of the connection that asks, never the session's (before: the operator's pages)."""
    port, _, passwords = door
    operator = log_in(port)[2]
    with open_stream(port, operator) as stream:
        session_id, drawn = app_run(stream)
    assert session_id and "Logged in as operator (operator)" in drawn
    ada = log_in(port, "ada", passwords["ada"])[2]
    with open_stream(port, ada, session_id) as stream:
        resumed, drawn = app_run(stream)
    assert resumed == session_id  # Streamlit did resume it
    assert "Logged in as ada (annotator)" in drawn and "Logged in as operator" not in drawn
