"""The front door `cai app` puts before Streamlit when the app asks for a login: a small reverse proxy that
logs people in and lets only logged-in requests through.

Why a proxy, and why written here: Streamlit keeps a login in its session, which anyone holding the session id
resumes, and it cannot set an HttpOnly cookie or refuse an upload before the page's script has run (the upload
endpoint buffers the whole body first). So the login has to happen before Streamlit, on the HTTP level. No
maintained Python package embeds such an authenticating proxy in-process (oauth2-proxy and Caddy's forward auth
are separate daemons, in Go), so this is one, on the ASGI pieces Streamlit itself runs on: uvicorn serves it,
httpx2 (HTTP) and websockets (the app's stream) reach Streamlit, which listens on 127.0.0.1 only. No HTTP is
parsed here by hand.

What it does:
- `/_cai/login` (a plain HTML form: name, password or token) and `/_cai/logout`; `?token=...` on any URL logs
  in with the token and answers a 303 to the same URL without it, so the token leaves no history entry;
- a login is a server-side session (random id → actor, expiry) named by a signed, HttpOnly, SameSite=Strict
  cookie; logging out forgets it and closes its open streams;
- without that cookie a page gets the login form and everything else (the websocket stream, uploads, static
  files) 401: a Streamlit session id alone gives nothing, and an upload is refused before a byte is read;
- what passes goes to Streamlit with the actor in a header signed with a key handed to Streamlit in its
  environment (`auth.sign_identity`); a header of that name sent by the client is dropped;
- request bodies are capped (413, before reading when the length is declared), and each login may have only a
  few uploads in flight (429);
- failed logins are slowed: after a few from an address (and after more from everyone together), each further
  try waits twice as long as the last (429 with Retry-After, no password checked meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

import httpx2
import uvicorn
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as connect_websocket
from websockets.exceptions import ConnectionClosed

from .auth import IDENTITY_HEADER, LOGIN_PATH, LOGOUT_PATH, Access, Actor, sign_identity
from .frontdoor_limits import FailedLogins, Limits

COOKIE = "cai_login"
UPLOAD_PREFIX = "/_stcore/upload_file/"
OPEN_PATHS = ("/_stcore/health",)  # says only whether the server is up
MAX_LOGIN_FORM = 16 * 1024
# Connection-level headers, which belong to one hop and are not forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}


@dataclass
class Login:
    actor: Actor
    expires: float
    uploads: int = 0
    streams: set[asyncio.Task] = field(default_factory=set)


class FrontDoor:
    """The ASGI app: log in, then pass requests and the stream to Streamlit on 127.0.0.1:`upstream_port`."""

    def __init__(self, access: Access, upstream_port: int, identity_key: str, limits: Limits | None = None):
        self.access, self.identity_key = access, identity_key
        self.limits = limits or Limits()
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.cookie_key = secrets.token_bytes(32)  # logins live in this process; a restart logs everyone out
        self.logins: dict[str, Login] = {}
        self.failures = FailedLogins(self.limits)
        # One check at a time: scrypt takes 16 MB and ~50 ms of a core, so a flood of parallel tries queues
        # instead of filling memory, and each try sees the waits the ones before it earned.
        self.checking = asyncio.Lock()
        self.client: httpx2.AsyncClient | None = None

    # --- logins ------------------------------------------------------------------------------------------

    def _cookie_value(self, login_id: str) -> str:
        mac = hmac.new(self.cookie_key, login_id.encode(), hashlib.sha256).hexdigest()
        return f"{login_id}.{mac}"

    def login_of(self, cookies: dict[str, str]) -> Login | None:
        login_id, _, mac = cookies.get(COOKIE, "").partition(".")
        if not login_id or not hmac.compare_digest(self._cookie_value(login_id), f"{login_id}.{mac}"):
            return None
        login = self.logins.get(login_id)
        if login and login.expires < time.time():
            self.logins.pop(login_id)
            return None
        return login

    def start_login(self, actor: Actor, response: Response) -> None:
        now = time.time()
        for stale in [k for k, v in self.logins.items() if v.expires < now]:
            del self.logins[stale]
        login_id = secrets.token_urlsafe(32)
        self.logins[login_id] = Login(actor, now + self.limits.login_hours * 3600)
        response.set_cookie(
            COOKIE,
            self._cookie_value(login_id),
            max_age=int(self.limits.login_hours * 3600),
            httponly=True,
            samesite="strict",
            path="/",
        )

    async def check(self, request: Request, name: str, secret: str) -> Actor | None | float:
        """The actor NAME and SECRET log in as; None when wrong; or the seconds to wait before trying."""
        address = request.client.host if request.client else "?"
        async with self.checking:  # the wait is read here, so that tries sent in parallel count one by one
            wait = self.failures.wait_s(address)
            if wait > 0:
                return wait
            actor = await asyncio.to_thread(self.access.login, name, secret)  # scrypt: off the event loop
            if actor is None:
                self.failures.failed(address)
            else:
                self.failures.succeeded(address)
            return actor

    # --- the ASGI entry point ----------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self.stream(WebSocket(scope, receive, send))
        elif scope["type"] == "http":
            response = await self.http(Request(scope, receive), send)
            if response is not None:
                await response(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx2.AsyncClient(
                    base_url=f"http://{self.upstream}", trust_env=False, timeout=httpx2.Timeout(None, connect=10)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, request: Request, send) -> Response | None:
        path = request.url.path
        if path == LOGIN_PATH:
            return await self.login_page(request)
        if path == LOGOUT_PATH:
            return self.logout(request)
        if "token" in request.query_params:
            return await self.token_login(request)
        login = self.login_of(request.cookies)
        if login is None and path not in OPEN_PATHS:
            if request.method == "GET" and not path.startswith("/_stcore/"):
                return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': _here(request)})}", 303)
            return PlainTextResponse("Log in first.", 401)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not self.same_origin(request.headers):
            return PlainTextResponse("Cross-origin request refused.", 403)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return PlainTextResponse(f"Too large: uploads are capped at {self.limits.max_upload_mb} MB.", 413)
        if login is not None and path.startswith(UPLOAD_PREFIX) and request.method in ("PUT", "POST"):
            if login.uploads >= self.limits.uploads_in_flight:
                return PlainTextResponse(
                    f"Too many uploads at once: at most {self.limits.uploads_in_flight} per login.", 429
                )
            login.uploads += 1
            try:
                return await self.forward(request, login, send)
            finally:
                login.uploads -= 1
        return await self.forward(request, login, send)

    # --- the login pages ---------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        target = _safe_next(request.query_params.get("next", "/"))
        if request.method != "POST":
            return login_form(target)
        if not self.same_origin(request.headers):
            return PlainTextResponse("Cross-origin login refused.", 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_FORM:
                return PlainTextResponse("Too large.", 413)
        form = dict(parse_qsl(body.decode("utf-8", errors="replace")))
        target = _safe_next(form.get("next", target))
        result = await self.check(request, form.get("name", ""), form.get("secret", ""))
        if isinstance(result, float):
            return login_form(target, _wait_message(result), 429, {"Retry-After": str(int(result) + 1)})
        if result is None:
            return login_form(target, "Wrong name, password or token.", 401)
        response = RedirectResponse(target, 303)
        self.start_login(result, response)
        return response

    async def token_login(self, request: Request) -> Response:
        query = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "token"]
        target = request.url.path + (f"?{urlencode(query)}" if query else "")
        result = await self.check(request, "", request.query_params["token"])
        if isinstance(result, float):
            return login_form(target, _wait_message(result), 429, {"Retry-After": str(int(result) + 1)})
        if result is None:
            return login_form(target, "Wrong token.", 401)
        response = RedirectResponse(target, 303)  # the URL with the token is never a page of the history
        self.start_login(result, response)
        return response

    def logout(self, request: Request) -> Response:
        login_id = request.cookies.get(COOKIE, "").partition(".")[0]
        if self.login_of(request.cookies):
            for task in self.logins.pop(login_id).streams:
                task.cancel()
        response = RedirectResponse(LOGIN_PATH, 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @staticmethod
    def same_origin(headers) -> bool:
        """A browser's request from a page of this server (or no Origin: not sent by a browser's script)."""
        origin = headers.get("origin")
        return origin is None or origin.split("://", 1)[-1] == headers.get("host")

    # --- forwarding --------------------------------------------------------------------------------------

    def upstream_headers(self, headers, login: Login | None) -> list[tuple[str, str]]:
        forwarded = [
            (k, v)
            for k, v in headers.items()
            if k not in HOP_BY_HOP and k not in ("origin", "cookie", IDENTITY_HEADER.lower())
        ]
        cookies = "; ".join(f"{k}={v}" for k, v in _cookies(headers).items() if k != COOKIE)
        if cookies:  # Streamlit's XSRF cookie; never the login's
            forwarded.append(("cookie", cookies))
        if "origin" in headers:  # checked as same-origin above; Streamlit sees its own
            forwarded.append(("origin", f"http://{self.upstream}"))
        if login is not None:
            forwarded.append((IDENTITY_HEADER, sign_identity(login.actor, self.identity_key)))
        return forwarded

    async def forward(self, request: Request, login: Login | None, send) -> Response | None:
        cap, read = self.limits.max_body_bytes, 0

        async def body():
            nonlocal read
            async for chunk in request.stream():
                read += len(chunk)
                if read > cap:
                    raise BodyTooLarge
                yield chunk

        has_body = request.method not in ("GET", "HEAD", "OPTIONS")
        upstream_request = self.client.build_request(
            request.method,
            _raw_target(request.scope),
            headers=self.upstream_headers(request.headers, login),
            content=body() if has_body else None,
        )
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except BodyTooLarge:
            return PlainTextResponse(f"Too large: uploads are capped at {self.limits.max_upload_mb} MB.", 413)
        except httpx2.TransportError:
            return PlainTextResponse("The app is starting or has stopped; try again in a moment.", 502)
        try:
            headers = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in upstream.headers.multi_items()
                if k.lower() not in HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await upstream.aclose()
        return None

    async def stream(self, websocket: WebSocket) -> None:
        """Relay the app's websocket both ways, for a logged-in browser only (else refuse the handshake: 403)."""
        login = self.login_of(websocket.cookies)
        if login is None or not self.same_origin(websocket.headers):
            await websocket.close(code=1008)
            return
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        headers = [(k, v) for k, v in self.upstream_headers(websocket.headers, login) if k.lower() in _WS_HEADERS]
        try:
            upstream = await connect_websocket(
                f"ws://{self.upstream}{_raw_target(websocket.scope)}",
                subprotocols=offered or None,
                additional_headers=headers,
                proxy=None,
                max_size=None,  # the app's own messages, whatever their size
                compression=None,
            )
        except Exception:  # noqa: BLE001 - any failed handshake (Streamlit down, refused) is one refusal
            await websocket.close(code=1011)
            return
        await websocket.accept(subprotocol=upstream.subprotocol)
        task = asyncio.current_task()
        login.streams.add(task)
        try:
            await _relay(websocket, upstream)
        except asyncio.CancelledError:  # logged out
            pass
        finally:
            login.streams.discard(task)
            await upstream.close()
            with contextlib.suppress(RuntimeError):  # already closed by the browser
                await websocket.close()


_WS_HEADERS = {"cookie", "origin", "user-agent", "accept-language", IDENTITY_HEADER.lower()}


class BodyTooLarge(Exception):
    pass


async def _relay(websocket: WebSocket, upstream) -> None:
    async def to_app() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await upstream.send(message["bytes"] if message.get("bytes") is not None else message["text"])

    async def to_browser() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)

    tasks = [asyncio.create_task(to_app()), asyncio.create_task(to_browser())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() and not isinstance(task.exception(), (ConnectionClosed, WebSocketDisconnect)):
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()


def _cookies(headers) -> dict[str, str]:
    jar = SimpleCookie()
    for value in headers.getlist("cookie"):
        try:
            jar.load(value)
        except CookieError:  # a malformed cookie header forwards nothing
            continue
    return {k: m.value for k, m in jar.items()}


def _raw_target(scope) -> str:
    """The path and query as the client sent them (still percent-encoded), to pass on unchanged."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(target: str) -> str:
    """Only a path of this server: `next` must not send a login elsewhere (`//evil.example`, `https://...`)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _wait_message(seconds: float) -> str:
    return f"Too many failed logins: try again in {int(seconds) + 1} s."


def login_form(target: str, error: str = "", status: int = 200, headers: dict | None = None) -> HTMLResponse:
    page = LOGIN_HTML.format(
        next=html.escape(target, quote=True),
        error=f'<p role="alert" class="error">{html.escape(error)}</p>' if error else "",
    )
    return HTMLResponse(
        page,
        status,
        {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": CSP, **(headers or {})},
    )


CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · CAI workbench</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: sans-serif; max-width: 24rem; margin: 4rem auto; padding: 0 1rem; color: #262730; }}
label {{ display: block; margin-top: 1rem; }} input {{ width: 100%; padding: .5rem; box-sizing: border-box; }}
button {{ margin-top: 1.5rem; padding: .5rem 1.5rem; }} .error {{ color: #b00020; }}
</style></head>
<body><h1>Log in</h1>{error}
<form method="post" action="/_cai/login">
<input type="hidden" name="next" value="{next}">
<label for="name">Name</label>
<input id="name" name="name" autocomplete="username" placeholder="empty: log in with the token">
<label for="secret">Password or token</label>
<input id="secret" name="secret" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
</form></body></html>
"""


def run(front_door: FrontDoor, host: str, port: int) -> uvicorn.Server:
    """The server for FRONT_DOOR on HOST:PORT (call `serve()` on it in an event loop)."""
    config = uvicorn.Config(
        front_door,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
        server_header=False,  # what passes through keeps Streamlit's own Date and Server
        date_header=False,
    )
    return uvicorn.Server(config)
