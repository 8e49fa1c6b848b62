"""OpenAI-compatible HTTP backend: chat generation and option scoring against vLLM, llama.cpp, Ollama or OpenAI.

Each chat is one `POST {base_url}/chat/completions`; requests go out in parallel over a fleet of base URLs, each
to the live server with the fewest in flight, at most `concurrency` per server (`Servers`), over connections kept
alive from one request to the next (`Connections`; through a proxy, urllib's one connection a request). A request
that fails in a way another try may fix (connection refused, timeout, dropped, HTTP 429 or 5xx) is retried at once
on another server, then with exponential backoff; a server that refuses connections is routed around for a while.
A request still running at its batch's end, long after the batch's median, is sent again to another server and
the first answer kept (`_run_all`). Each of these is counted in `incidents` and logged (a job's log.txt while a
job runs). Any other 4xx means the request itself is wrong (unknown model, bad key, bad parameter) and fails at
once with the server's own message.

Scoring is exact where the server is vLLM: the chat is tokenized by the server's own template (`POST /tokenize`), and
one completions request for every eight chats asks for the log-probability of exactly the option tokens that follow each
context (`logprob_token_ids`), as the in-process vLLM engine does, so multi-token options and unlikely letters score
what they are. Elsewhere (OpenAI, llama.cpp, Ollama: no /tokenize) it falls back to the `top_logprobs` extension of chat
completions: the 20 most likely first tokens of the reply, each option looked up by its text; there only single-token
options are supported ("A"/"B"), and an option outside the top 20 scores -inf. `scoring` says which.

Standard library only, so that pointing the workbench at a server needs no extra install.
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import logging
import os
import queue
import re
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from .base import BackendError, Chat, Generation, SamplingParams, stripped
from .openai_wire import (
    api_url,
    failure_reason,
    first_token_top_logprobs,
    next_token_logprobs,
    option_logprob,
    server_message,
    stream_pieces,
    to_generation,
    token_ids,
)
from .server_pool import Connections, DaemonPool, Servers

TOP_LOGPROBS = 20  # the most OpenAI allows, and vLLM's default --max-logprobs
CHAT = "/v1/chat/completions"
EXACT, TOP_20 = "exact (vLLM prompt tokens)", "approximate (top-20 first tokens)"
# A request still running once this share of its batch is in, and HEDGE_FACTOR times the batch's median request
# (at least HEDGE_MIN_SECONDS), is sent again to another server; the batch is checked this often.
HEDGE_AFTER_SHARE, HEDGE_FACTOR, HEDGE_MIN_SECONDS, HEDGE_CHECK_SECONDS = 0.9, 2.0, 0.5, 0.1
HEDGE_COPIES = 3
# Chats whose options one completions request scores (each chat's /tokenize is its own request).
SCORE_CHATS_PER_REQUEST = 8

log = logging.getLogger(__name__)


def _refused_redirect(url: str, code: int, location: str) -> BackendError:
    """A listed server that redirects would have urllib resend the request, its key included, to a host nobody
    listed: the redirect is refused, naming where it pointed."""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
    return BackendError(
        f"{url} answered HTTP {code}, a redirect to {target.scheme}://{target.netloc}{target.path}; "
        "redirects are not followed (the request and its key go only where listed): name the URL it "
        "redirects to instead"
    )


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        raise _refused_redirect(req.full_url, code, newurl)


_OPENER = urllib.request.build_opener(_RefuseRedirects)
# A server on this machine (the workbench's own engine service, a test fleet) is reached directly: a proxy from the
# environment (`http_proxy` without a `no_proxy` for loopback) would otherwise receive the request and its key.
_DIRECT = urllib.request.build_opener(_RefuseRedirects, urllib.request.ProxyHandler({}))
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _opener_for(url: str) -> urllib.request.OpenerDirector:
    return _DIRECT if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS else _OPENER


def _reached_directly(url: str) -> bool:
    """Whether a request to URL goes straight to its server (loopback, or no proxy set for it): only those go over
    kept-alive connections; one through a proxy goes by urllib, which knows the proxy's ways."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname in LOOPBACK_HOSTS:
        return True
    return parts.scheme not in urllib.request.getproxies() or bool(urllib.request.proxy_bypass(parts.hostname or ""))


class OpenAICompatBackend:
    """A model behind one or more OpenAI-compatible servers (`base_urls` like http://host:8000/v1)."""

    engine = "openai"
    dtype = None  # the server's business
    parameters = None
    context_length = None  # the server knows it and refuses a prompt that does not fit, with a message

    def count_tokens(self, chat: Chat) -> int:
        raise BackendError(f"{self.name}: an OpenAI-compatible server does not count tokens")

    def __init__(
        self,
        model: str,
        base_urls: list[str],
        *,
        api_keys: dict[str, str] | None = None,
        concurrency: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
    ):
        urls = [u.strip().rstrip("/") for u in base_urls if u.strip()]
        if not urls:
            raise BackendError(f"no server URL given for model {model!r}: expected openai:MODEL@URL[,URL...]")
        for url in urls:
            # urllib would only complain at the first request, with a less helpful message.
            if not url.startswith(("http://", "https://")):
                raise BackendError(f"server URL {url!r} must start with http:// or https:// (e.g. http://host:8000/v1)")
        self.model = model
        self.name = f"openai:{model}"
        self.base_urls = urls
        self.api_keys = {url.rstrip("/"): key for url, key in (api_keys or {}).items()}  # a key only where listed
        # requests in flight per server: a vLLM server batches many at once, and queues what it cannot take
        self.concurrency = max(1, concurrency or int(os.environ.get("CAI_OPENAI_CONCURRENCY", "32")))
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        # One counter across calls, so that a stream of one-chat calls still spreads over the fleet.
        self._turn = itertools.count()
        self._turn_lock = threading.Lock()
        self.scoring: str | None = None  # EXACT or TOP_20, found at the first score_options
        self.incidents: Counter[str] = Counter()  # failed, stalled and hedged requests, by kind
        self._servers = Servers(urls, self.concurrency)
        self._connections = Connections(timeout)
        self._kept_alive = {url for url in urls if _reached_directly(url)}
        # what the fleet takes at once: a job keeps enough batches running to fill it (`job_runner.in_flight_for`)
        self.slots = self.concurrency * len(urls)
        self._executor: DaemonPool | None = None
        self._option_ids: dict[tuple[str, ...], list[list[int]] | None] = {}

    # --- generation --------------------------------------------------------------------------

    def _chat_body(self, chat: Chat, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        if params.min_new_tokens:
            # A vLLM extension; sent only when asked for, since OpenAI itself rejects unknown fields.
            body["min_tokens"] = params.min_new_tokens
        return body

    def generate(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> list[Generation]:
        bodies = [self._chat_body(chat, params) for chat in chats]
        return [to_generation(data, url, seconds) for data, url, seconds in self._post_all(bodies, on_done)]

    def generate_each(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> Iterator[list[tuple[int, Generation]]]:
        """`generate`'s answers as they come (`base.generate_each`)."""
        bodies = [self._chat_body(chat, params) for chat in chats]
        for done in self._each_done(bodies, self._post, on_done):
            yield [(index, to_generation(data, url, seconds)) for index, (data, url, seconds) in done]

    def stream(self, chat: Chat, params: SamplingParams) -> Iterator[str]:
        """One chat's answer piece by piece (`base.stream`), from the server's event stream (`"stream": true`):
        each event's `delta.content`. A failure before the answer starts is retried as any request is."""
        with self._turn_lock:
            start = next(self._turn)
        response, base, _ = self._send({**self._chat_body(chat, params), "stream": True}, start, stream=True)
        with response:
            yield from stripped(stream_pieces(response, base))

    # --- scoring -----------------------------------------------------------------------------

    def score_options(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        """Sum of log P(option tokens | chat + assistant prefix) for each chat and option: exact on vLLM, else
        read from the top 20 first tokens (-inf where an option is not among them)."""
        if self.scoring != TOP_20:
            key = tuple(options)
            if key not in self._option_ids:  # the judge asks with the same options batch after batch
                self._option_ids[key] = self._tokenized_options(options)
            option_ids = self._option_ids[key]
            if option_ids is not None:
                self.scoring = EXACT
                return self._score_exactly(chats, option_ids)
            self.scoring = TOP_20
        return self._score_from_top_tokens(chats, options)

    def _tokenized_options(self, options: list[str]) -> list[list[int]] | None:
        """Each option's token ids by the server's tokenizer, or None where the server is not vLLM: no /tokenize
        (OpenAI), or one that speaks another dialect (llama.cpp's takes `content` and names no `max_model_len`)."""
        bodies = [{"model": self.model, "prompt": o, "add_special_tokens": False} for o in options]
        try:
            probe = self._post_all(bodies[:1], route="/tokenize")  # one request finds out, not one per option
        except BackendError as exc:
            if re.search(r"HTTP 4(?!01|03)\d\d", str(exc)):
                return None
            raise
        if not isinstance(probe[0][0], dict) or "max_model_len" not in probe[0][0]:
            return None
        ids = [token_ids(data, url) for data, url, _ in probe + self._post_all(bodies[1:], route="/tokenize")]
        if any(not i for i in ids):
            raise BackendError("every option must encode to at least one token")
        return ids

    def _score_exactly(self, chats: list[Chat], option_ids: list[list[int]]) -> list[list[float]]:
        """Each chat's tokens by the server's template (/tokenize), then per group of SCORE_CHATS_PER_REQUEST chats
        one completions request whose contexts are those tokens plus each proper prefix of each option (a
        single-token option needs only the chat's own), each asking the log-probabilities of the option tokens
        that may follow it. A group's contexts are sequences of their own in the server's batch, as separate
        requests' would be; one request for them all is a fraction of the client's CPU (per request it is mostly
        HTTP's own). The two steps run one after the other, each over the whole batch, so that every request is
        hedged on its own: a group that also tokenized its chats was nine requests in a row, one stall in any of
        which held the group, and too many held groups kept its batch from hedging at all (a job runs several
        batches at once, so the fleet is kept busy across the step between them)."""
        steps = [(ids[:k], token) for ids in option_ids for k, token in enumerate(ids)]
        starts = list(dict.fromkeys(tuple(start) for start, _ in steps))
        wanted = sorted({token for _, token in steps})
        tokenize = [{"model": self.model, "messages": chat, "add_generation_prompt": True} for chat in chats]
        prefixes = [token_ids(data, url) for data, url, _ in self._post_all(tokenize, route="/tokenize")]
        groups = [prefixes[i : i + SCORE_CHATS_PER_REQUEST] for i in range(0, len(prefixes), SCORE_CHATS_PER_REQUEST)]
        bodies = [
            {
                "model": self.model,
                "prompt": [prefix + list(start) for prefix in group for start in starts],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": len(wanted),
                "logprob_token_ids": wanted,
                "return_tokens_as_token_ids": True,
            }
            for group in groups
        ]
        scores = []
        for body, (data, url, _) in zip(bodies, self._post_all(bodies, route="/v1/completions"), strict=True):
            after = next_token_logprobs(data, url, len(body["prompt"]))
            for first in range(0, len(after), len(starts)):
                logprob = {(start, t): after[first + i][t] for i, start in enumerate(starts) for t in wanted}
                scores.append([sum(logprob[(tuple(ids[:k]), t)] for k, t in enumerate(ids)) for ids in option_ids])
        return scores

    def _score_from_top_tokens(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        bodies = [
            {
                "model": self.model,
                "messages": chat,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
            }
            for chat in chats
        ]
        scores = []
        for data, url, _ in self._post_all(bodies):
            top = first_token_top_logprobs(data)
            if top is None:
                raise BackendError(
                    f"{url} returned no log-probabilities; use a server that supports logprobs (vLLM, llama.cpp) "
                    "to score options, or a local model"
                )
            scores.append([option_logprob(option, top) for option in options])
        return scores

    # --- transport ---------------------------------------------------------------------------

    def _pool(self) -> DaemonPool:
        with self._turn_lock:
            if self._executor is None:
                # one worker per slot of the fleet: every server can be kept full, and no more is sent
                self._executor = DaemonPool(self.slots)
            return self._executor

    def _post_all(
        self, bodies: list[dict], on_done: Callable[[int], object] | None = None, route: str = CHAT
    ) -> list[tuple[dict, str, float]]:
        return self._run_all(bodies, lambda body, turn: self._post(body, turn, route), on_done)

    def _run_all(self, items: list, task: Callable[[Any, int], Any], on_done: Callable[[int], object] | None = None):
        """`task(item, turn)` for every item, over the fleet at once; the results in the items' order."""
        results: dict[int, Any] = {}
        for done in self._each_done(items, task, on_done):
            results.update(done)
        return [results[i] for i in range(len(items))]

    def _each_done(
        self, items: list, task: Callable[[Any, int], Any], on_done: Callable[[int], object] | None = None
    ) -> Iterator[list[tuple[int, Any]]]:
        """`task(item, turn)` for every item, over the fleet at once, yielding `(index, result)` pairs as they end:
        each yield all that ended since the last, so a caller that stores them keeps up at any rate; `on_done(1)`
        for each before it is yielded. The first failure (one that outlived its retries) is raised after what ended
        before it is yielded. Once most of the items are in, one still running far longer than the typical one gets
        a second copy on another server and the first answer is kept: a stalled request costs a hedge, not the
        client's whole timeout."""
        if not items:
            return
        with self._turn_lock:
            turns = [next(self._turn) for _ in items]
        if len(items) == 1:
            result = task(items[0], turns[0])
            if on_done:
                on_done(1)
            yield [(0, result)]
            return
        pool = self._pool()
        started: dict[int, float] = {}
        answers: queue.SimpleQueue = queue.SimpleQueue()  # (index, result, error) as each copy ends

        # a copy is given its own item, not the batch: one that stalls keeps only its request alive, not all of them
        def run(index: int, item, turn: int) -> None:
            started.setdefault(index, time.monotonic())
            try:
                answers.put((index, task(item, turn), None))
            except Exception as exc:  # noqa: BLE001 - handed to the caller below, unless another copy answers
                answers.put((index, None, exc))

        for index, turn in enumerate(turns):
            pool.submit(run, index, items[index], turn)
        results: set[int] = set()
        seconds: list[float] = []
        copies = dict.fromkeys(range(len(items)), 1)  # copies of each item still running
        while len(results) < len(items):
            ended, failure = [], None
            try:
                ended.append(answers.get(timeout=HEDGE_CHECK_SECONDS))
                while True:  # and whatever else has ended meanwhile
                    ended.append(answers.get_nowait())
            except queue.Empty:
                pass
            done = []
            for index, result, error in ended:
                copies[index] -= 1
                if index in results:
                    continue  # its other copy answered first
                if error is None:
                    results.add(index)
                    seconds.append(time.monotonic() - started[index])
                    done.append((index, result))
                    if on_done:
                        on_done(1)
                elif not copies[index]:
                    failure = failure or error  # every copy failed: the item's own reason
            if done:
                yield done
            if failure:
                raise failure
            if len(results) >= HEDGE_AFTER_SHARE * len(items):
                self._hedge(pool, run, items, turns, started, results, copies, seconds)

    def _hedge(self, pool, run, items, turns, started, results, copies, seconds) -> None:
        """Another copy of each item running longer than HEDGE_FACTOR times the batch's median per copy it has:
        a hedge that stalls in its turn (one in a few hundred) gets its own, up to HEDGE_COPIES at once."""
        slow = max(HEDGE_MIN_SECONDS, HEDGE_FACTOR * statistics.median(seconds))
        now = time.monotonic()
        for index, began in list(started.items()):
            if index not in results and copies[index] < HEDGE_COPIES and now - began > slow * copies[index]:
                copies[index] += 1
                self._incident("hedged", f"a request running {now - began:.0f} s sent again")
                pool.submit(run, index, items[index], turns[index] + copies[index], urgent=True)

    def _post(self, body: dict, start: int, route: str = CHAT) -> tuple[dict, str, float]:
        """One request with retries; returns (response JSON, base URL that answered, seconds)."""
        payload, base, began = self._send(body, start, route)
        seconds = time.perf_counter() - began
        try:
            return json.loads(payload), base, seconds
        except ValueError:
            raise BackendError(f"{base} answered with something that is not JSON: {payload[:200]!r}") from None

    def _exchange(self, base: str, request: urllib.request.Request) -> bytes:
        """REQUEST over a kept-alive connection to BASE, its answer's body returned; an HTTP error is raised as
        urllib raises it, so that both ways share `_send`'s handling."""
        connection = self._connections.take(base)
        target = urllib.parse.urlsplit(request.full_url)
        try:
            connection.request("POST", target.path, body=request.data, headers=request.headers)
            response = connection.getresponse()
            payload = response.read()
        except BaseException:
            connection.close()  # half a request or answer may be on it: never reused
            raise
        self._connections.give_back(base, connection)
        if 300 <= response.status < 400:
            raise _refused_redirect(request.full_url, response.status, response.getheader("Location") or "")
        if response.status >= 400:
            raise urllib.error.HTTPError(
                request.full_url, response.status, response.reason, response.headers, io.BytesIO(payload)
            )
        return payload

    def _incident(self, kind: str, detail: str) -> None:
        """Count a failed, stalled or hedged request, and say so in the log (a job's log.txt while a job runs)."""
        with self._turn_lock:
            self.incidents[kind] += 1
        log.warning("%s: %s: %s", self.name, kind, detail)

    def _send(self, body: dict, start: int, route: str = CHAT, *, stream: bool = False) -> tuple[Any, str, float]:
        """One request, with retries; returns the response's body (with `stream`: the open response, to read as
        it comes), the base URL that answered and when the answering try began (`time.perf_counter`)."""
        data = json.dumps(body).encode()
        tries = self.max_retries + 1
        last_error, failed_on = "", None
        for attempt in range(tries):
            if attempt > 1:  # the first retry goes to another server at once; then the fleet gets time to recover
                time.sleep(self.backoff * 2 ** (attempt - 2))
            # Each retry goes to another server than the one that just failed: a sick one is passed over.
            base = self._servers.acquire(start + attempt, avoid=failed_on)
            accept = "text/event-stream" if stream else "application/json"
            headers = {"Content-Type": "application/json", "Accept": accept}
            if base in self.api_keys:
                headers["Authorization"] = f"Bearer {self.api_keys[base]}"
            request = urllib.request.Request(api_url(base, route), data=data, headers=headers, method="POST")
            began = time.perf_counter()
            refused = False
            try:
                if not stream and base in self._kept_alive:
                    return self._exchange(base, request), base, began
                response = _opener_for(request.full_url).open(request, timeout=self.timeout)
                if stream:
                    return response, base, began
                with response:
                    return response.read(), base, began
            except urllib.error.HTTPError as exc:
                message = server_message(exc)
                if exc.code == 429 or exc.code >= 500:
                    last_error = f"HTTP {exc.code} from {base}: {message}"
                    self._incident(f"HTTP {exc.code}", f"{base}: {message} (try {attempt + 1} of {tries})")
                    failed_on = base
                    continue
                if exc.code in (401, 403) and base not in self.api_keys:
                    message += " (no key was sent: a key goes only to the endpoints listed in endpoints.yaml)"
                raise BackendError(f"{base} rejected the request with HTTP {exc.code}: {message}") from None
            except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timed out
                reason = failure_reason(exc)
                last_error = f"{reason} ({base})"
                refused = isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
                kind = "refused" if refused else "timed out" if "timed out" in reason else "dropped"
                self._incident(kind, f"{base}: {reason} (try {attempt + 1} of {tries})")
                failed_on = base
                continue
            finally:
                if self._servers.release(base, dead=refused):
                    log.warning("%s: %s is down (connection refused): routed around it", self.name, base)
        raise BackendError(
            f"could not reach the model server(s) {', '.join(self.base_urls)} after {tries} tries: {last_error}"
        )
