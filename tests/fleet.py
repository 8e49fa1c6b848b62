"""A simulated fleet of OpenAI-compatible servers on loopback, for tests and benchmarks at scale.

Each server speaks the wire format the `openai:` client uses against vLLM: `POST /v1/chat/completions` (with `usage`),
`POST /tokenize` (a prompt or a chat, answered with `tokens` and `max_model_len`) and `POST /v1/completions` with prompt
token ids, `logprob_token_ids` and `return_tokens_as_token_ids`, answered with the log-probabilities of the asked tokens
after each prompt. No model runs: a reply costs `latency` seconds plus its generated tokens at `tokens_per_s`, a server
serves at most `concurrency` sequences at once (each prompt of a request is one) and queues the rest (as vLLM does), and
the log-probabilities are deterministic functions of the prompt that sum to less than 1, so that the judge's scores are
real numbers it can order. What is measured is then the workbench, not a model.

A fraction `faults` of requests misbehave on purpose, split evenly between HTTP 500, HTTP 429, a connection
closed without a reply, and a stall (a reply after `stall` seconds). With `hold_nth`, the fleet's Nth request is
held until the fleet has answered `hold_for` others (or `stall` seconds have passed): whether a client keeps the
fleet busy while one request runs long shows in the counts, not in times. `GET /stats` answers each server's counts.

It lives in tests/ beside the other test servers because it is test machinery, not part of the workbench; it
needs only the standard library, so benchmarks import it as they import tests/browser/seed.py, and
`python tests/fleet.py` runs it as its own process (the benchmark's, so that the workbench's CPU time is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

FAULTS = ("http_500", "http_429", "dropped", "stalled")
VOCABULARY = 50_000
MAX_MODEL_LEN = 8192


@dataclass(frozen=True)
class FleetConfig:
    servers: int = 2
    concurrency: int = 16  # sequences one server works on at once (a prompt of a request each); more wait in its queue
    latency: float = 0.0  # seconds of every reply before its first token (prefill, network)
    tokens_per_s: float = 0.0  # one request's generation speed; 0: instant
    faults: float = 0.0  # fraction of requests that fail or stall on purpose
    stall: float = 60.0  # how late a stalled request answers
    idle_timeout: float = 5.0  # a kept-alive connection with no request for this long is closed (uvicorn's default)
    hold_nth: int = 0  # the fleet's Nth request (1 = the first; 0: none) is held ...
    hold_for: int = 0  # ... until the fleet has answered this many others, or for `stall` seconds
    model: str = "sim"
    seed: int = 0

    def service_seconds(self, new_tokens: int) -> float:
        return self.latency + (new_tokens / self.tokens_per_s if self.tokens_per_s else 0.0)

    def rate(self, new_tokens: int) -> float:
        """The fleet's own limit in requests a second for replies of NEW_TOKENS tokens: every slot always busy."""
        seconds = self.service_seconds(new_tokens)
        return math.inf if seconds == 0 else self.servers * self.concurrency / seconds


@dataclass
class ServerStats:
    requests: Counter = field(default_factory=Counter)  # answered, by route
    faults: Counter = field(default_factory=Counter)  # injected, by kind
    busy_seconds: float = 0.0  # slot-seconds spent on answered requests (a sequence holds a slot)
    connections: int = 0  # opened by clients: fewer than requests where a client keeps them alive
    peak_in_flight: int = 0
    in_flight: int = 0
    held: Counter = field(default_factory=Counter)  # the held request's release: "by traffic" or "by timeout"


@dataclass
class FleetCounts:
    """What every server of a fleet counts together: requests received and answered (for `hold_nth`)."""

    received: int = 0
    answered: int = 0


def tokenize(text: str) -> list[int]:
    """Words (and the space before each) as token ids: "A" and "B" are one token each, a sentence several."""
    return [zlib.crc32(word.encode()) % (VOCABULARY - 1) + 1 for word in text.replace(" ", "\0 ").split("\0") if word]


def chat_tokens(messages: list[dict]) -> list[int]:
    return [ids for m in messages for ids in [1, *tokenize(f"{m.get('role')}: {m.get('content')}")]] + [2]


def next_token_logprobs(prompt: list[int], wanted: list[int]) -> dict[int, float]:
    """log P(token | prompt) for each wanted token: a softmax over them and the rest of the vocabulary (one
    logit of 0), so each is a real log-probability and together they sum to less than 1."""
    context = hash(tuple(prompt[-64:]))
    logits = {t: (zlib.crc32(f"{context}:{t}".encode()) % 4000) / 1000 - 1 for t in wanted}
    norm = math.log(1 + sum(math.exp(v) for v in logits.values()))
    return {t: v - norm for t, v in logits.items()}


def reply_text(messages: list[dict], seed: int, tokens: int) -> str:
    words = random.Random(f"{seed}:{json.dumps(messages)}").choices(["the", "a", "answer", "is", "kind"], k=tokens)
    return " ".join(words)


class SimServer:
    def __init__(self, config: FleetConfig, index: int, fleet_counts: FleetCounts):
        self.config, self.index, self.fleet_counts = config, index, fleet_counts
        self.stats = ServerStats()
        self.random = random.Random(f"{config.seed}:{index}")
        self.free_slots = config.concurrency
        self.slot_freed = asyncio.Condition()
        self.server: asyncio.base_events.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, backlog=1024)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests one after another on one connection (HTTP/1.1 keep-alive, as vLLM's server keeps them) until the
        client closes it or asks `Connection: close`."""
        self.stats.connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.config.idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # the client closed the connection between requests, or left it idle too long
                method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                lines = head.lower().split(b"\r\n")
                length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                status, answer = await self.answer(method, path, body)
                if status is None:
                    return  # a dropped connection: closed without a word
                keep_alive = b"connection: close" not in lines
                raw = json.dumps(answer).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
                    f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n".encode()
                    + raw
                )
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away (it gave up on a stall): nothing to answer
        finally:
            writer.close()

    async def answer(self, method: str, path: str, body: dict) -> tuple[int | None, dict]:
        stats = self.stats
        if method == "GET":
            if path == "/stats":
                return 200, {"url": self.url, **vars(stats)}
            return 200, {}  # /health
        fault = None
        if self.config.faults and self.random.random() < self.config.faults:
            fault = FAULTS[self.random.randrange(len(FAULTS))]
            stats.faults[fault] += 1
        if fault == "http_500":
            return 500, {"error": {"message": "injected failure", "type": "InternalServerError", "code": 500}}
        if fault == "http_429":
            return 429, {"error": {"message": "injected overload", "type": "RateLimitError", "code": 429}}
        if fault == "dropped":
            return None, {}
        if body.get("model") != self.config.model:
            return 400, {"error": {"message": f"model {body.get('model')!r} is not served here", "code": 400}}
        route = path.removeprefix("/v1")
        if route not in ("/chat/completions", "/completions", "/tokenize"):
            return 404, {"error": {"message": f"no route {path}", "code": 404}}
        if fault == "stalled":
            await asyncio.sleep(self.config.stall)  # a hung connection, not work: it holds no slot
        counts = self.fleet_counts
        counts.received += 1
        if counts.received == self.config.hold_nth:
            stats.held["by traffic" if await self.held(counts.answered + self.config.hold_for) else "by timeout"] += 1
        # vLLM batches each prompt of a completions request as a sequence of its own: so many slots it holds; its
        # API server tokenizes without the engine: a /tokenize holds none
        if route == "/tokenize":
            sequences = 0
        elif route == "/completions" and isinstance(body["prompt"][0], list):
            sequences = len(body["prompt"])
        else:
            sequences = 1
        async with self.slots(min(sequences, self.config.concurrency)):
            stats.in_flight += sequences
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
            began = time.monotonic()
            try:
                answer, new_tokens = self.compute(route, body)
                await asyncio.sleep(0 if route == "/tokenize" else self.config.service_seconds(new_tokens))
            finally:
                stats.in_flight -= sequences
            stats.busy_seconds += sequences * (time.monotonic() - began)
        stats.requests[route] += 1
        counts.answered += 1
        return 200, answer

    @contextlib.asynccontextmanager
    async def slots(self, wanted: int):
        """Hold WANTED of the server's slots at once, waiting (in its queue) until they are free."""
        async with self.slot_freed:
            await self.slot_freed.wait_for(lambda: self.free_slots >= wanted)
            self.free_slots -= wanted
        try:
            yield
        finally:
            async with self.slot_freed:
                self.free_slots += wanted
                self.slot_freed.notify_all()

    async def held(self, answered: int) -> bool:
        """Hold a request (holding no slot) until the fleet has answered ANSWERED requests in all; False when
        `stall` seconds pass first."""
        deadline = time.monotonic() + self.config.stall
        while self.fleet_counts.answered < answered:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def compute(self, route: str, body: dict) -> tuple[dict, int]:
        if route == "/tokenize":
            tokens = chat_tokens(body["messages"]) if "messages" in body else tokenize(body["prompt"])
            return {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens, "token_strs": None}, 0
        if route == "/completions":
            prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
            wanted = body.get("logprob_token_ids") or []
            choices = [
                {
                    "index": i,
                    "text": "",
                    "logprobs": {
                        "top_logprobs": [{f"token_id:{t}": lp for t, lp in next_token_logprobs(p, wanted).items()}]
                    },
                    "finish_reason": "length",
                }
                for i, p in enumerate(prompts)
            ]
            return {"object": "text_completion", "model": self.config.model, "choices": choices}, 1
        messages = body["messages"]
        new_tokens = max(int(body.get("min_tokens") or 0), int(body.get("max_tokens") or 16))
        prompt_tokens = len(chat_tokens(messages))
        message = {"role": "assistant", "content": reply_text(messages, int(body.get("seed") or 0), new_tokens)}
        return {
            "object": "chat.completion",
            "model": self.config.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "length", "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": new_tokens,
                "total_tokens": prompt_tokens + new_tokens,
            },
        }, new_tokens


class Fleet:
    """The servers of one config, served by one event loop in a thread of this process (`running`)."""

    def __init__(self, config: FleetConfig):
        self.config = config
        counts = FleetCounts()
        self.servers = [SimServer(config, i, counts) for i in range(config.servers)]
        self.loop = asyncio.new_event_loop()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def stats(self) -> list[ServerStats]:
        return [s.stats for s in self.servers]

    def kill(self, index: int) -> None:
        """The server stops listening: a node lost (its new connections are refused)."""
        server = self.servers[index].server
        self.loop.call_soon_threadsafe(server.close)

    async def _start(self) -> None:
        for server in self.servers:
            await server.start()

    async def _stop(self) -> None:
        """End every connection still open (a client's idle kept-alive ones wait in a read), then the loop."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loop.stop()


@contextlib.contextmanager
def running(config: FleetConfig) -> Iterator[Fleet]:
    fleet = Fleet(config)
    thread = threading.Thread(target=fleet.loop.run_forever, name="simulated fleet", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fleet._start(), fleet.loop).result(timeout=30)
    try:
        yield fleet
    finally:
        asyncio.run_coroutine_threadsafe(fleet._stop(), fleet.loop)
        thread.join(timeout=10)


def fetch_stats(url: str) -> dict:
    """GET /stats of a server running in another process."""
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=30) as response:
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> None:
    """Serve a fleet until killed; the first line of stdout is the JSON list of its base URLs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(FleetConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    config = FleetConfig(**vars(parser.parse_args(argv)))
    fleet = Fleet(config)
    fleet.loop.run_until_complete(fleet._start())
    print(json.dumps(fleet.urls), flush=True)
    fleet.loop.run_forever()


if __name__ == "__main__":
    sys.exit(main())
