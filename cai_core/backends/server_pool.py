"""The fleet's side of the OpenAI-compatible client: which server each request goes to (`Servers`), the threads
that send them (`DaemonPool`) and the connections they go over (`Connections`). Standard library only, as the
client is."""

from __future__ import annotations

import http.client
import queue
import select
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable


class DaemonPool:
    """Up to `limit` worker threads, started as the work needs them, that do not hold the process open at its
    exit as ThreadPoolExecutor's do: a request that a hedge has answered may still be waiting on a stalled
    server, and nobody wants its answer any more. A hedge gets a worker beyond the limit (`urgent`), which ends
    after its task: the workers held by stalled requests would otherwise leave it queued behind them."""

    def __init__(self, limit: int):
        self.limit, self.started, self.waiting = limit, 0, 0
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()

    def submit(self, function: Callable, *args, urgent: bool = False) -> None:
        """Run `function(*args)` on a free worker; it reports its own outcome (the client's `_run_all`)."""
        with self.lock:
            if self.tasks.qsize() >= self.waiting and (urgent or self.started < self.limit):
                self.started += 1
                threading.Thread(target=self._work, name=f"openai-{self.started}", daemon=True).start()
            self.tasks.put((function, args))

    def _work(self) -> None:
        while True:
            with self.lock:
                if self.started > self.limit:  # an urgent worker, or one over after the limit was reached
                    self.started -= 1
                    return
                self.waiting += 1
            function, args = self.tasks.get()
            with self.lock:
                self.waiting -= 1
            function(*args)


class Servers:
    """Where each try goes: the live server with the fewest requests in flight, none holding more than
    `per_server` at once (the rest wait here, not in a server's queue). A server that refuses connections is
    down: routed around for a while that doubles with each refusal (up to a minute), then tried again."""

    def __init__(self, urls: list[str], per_server: int):
        self.urls, self.per_server = urls, per_server
        self.in_flight = dict.fromkeys(urls, 0)
        self.down_until = dict.fromkeys(urls, 0.0)
        self.refusals = dict.fromkeys(urls, 0)
        self.changed = threading.Condition()

    def acquire(self, turn: int, avoid: str | None = None) -> str:
        with self.changed:
            while True:
                now = time.monotonic()
                live = [u for u in self.urls if self.down_until[u] <= now]
                # every server down: try the one due back first rather than fail a job a restart would save
                live = live or [min(self.urls, key=self.down_until.__getitem__)]
                candidates = [u for u in live if u != avoid] or live
                free = [u for u in candidates if self.in_flight[u] < self.per_server]
                if free:
                    # the turn breaks ties, so that a stream of single requests still spreads over the fleet
                    url = min(free, key=lambda u: (self.in_flight[u], (self.urls.index(u) - turn) % len(self.urls)))
                    self.in_flight[url] += 1
                    return url
                self.changed.wait(timeout=1.0)  # a release, or a down server's time being up

    def release(self, url: str, *, dead: bool) -> bool:
        """Free URL's slot; with `dead`, mark it down. True when that takes a live server out."""
        with self.changed:
            self.in_flight[url] -= 1
            newly_down = False
            if dead:
                newly_down = self.down_until[url] <= time.monotonic()
                self.refusals[url] += 1
                self.down_until[url] = time.monotonic() + min(60.0, 2.0 ** self.refusals[url])
            else:
                self.refusals[url] = 0
            self.changed.notify_all()
            return newly_down


class Connections:
    """Keep-alive connections to each server, handed to one request at a time and taken back after its answer is read.
    urllib opens a new connection for every request and closes it after: at a fleet's rate (a label is two requests and
    a quarter) the connect, and over https the TLS handshake, cost the client more CPU than the request itself, and no
    well-kept standard-library pool exists (urllib3 and httpx are not what the client may assume installed). A
    connection the server has closed while idle (its keep-alive timeout) is found before it is used, as urllib3 does: an
    idle socket that polls readable has nothing left to give but its end."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.idle: dict[str, list[http.client.HTTPConnection]] = {}
        self.lock = threading.Lock()

    def take(self, base: str) -> http.client.HTTPConnection:
        with self.lock:
            idle = self.idle.setdefault(base, [])
            while idle:
                connection = idle.pop()
                if connection.sock is not None and not _readable(connection.sock):
                    return connection
                connection.close()
        parts = urllib.parse.urlsplit(base)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)

    def give_back(self, base: str, connection: http.client.HTTPConnection) -> None:
        """Keep CONNECTION for the next request to BASE; one whose answer said it closes (http.client has closed it)
        is let go."""
        if connection.sock is None:
            return
        with self.lock:
            self.idle.setdefault(base, []).append(connection)


def _readable(sock) -> bool:
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, where a fleet's connections may number in the thousands
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])
