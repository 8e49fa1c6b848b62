"""The `openai:` client against a simulated fleet (tests/fleet.py): what a fleet needs from it, at small size."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter

from cai_core.backends.base import SamplingParams
from cai_core.backends.openai_compat import EXACT, SCORE_CHATS_PER_REQUEST, OpenAICompatBackend

from .fleet import FleetConfig, chat_tokens, next_token_logprobs, running, tokenize

CHATS = [[{"role": "user", "content": f"question {i}"}] for i in range(64)]


def test_every_server_is_kept_as_busy_as_the_client_allows():
    """Concurrency is per server: four servers each hold four requests at once (before: eight in all, two each)."""
    with running(FleetConfig(servers=4, concurrency=8, latency=0.2)) as fleet:
        out = OpenAICompatBackend("sim", fleet.urls, concurrency=4).generate(CHATS, SamplingParams(max_new_tokens=4))
        peaks = [s.peak_in_flight for s in fleet.stats()]
    assert len(out) == 64
    assert peaks == [4, 4, 4, 4]


def test_connections_are_kept_alive_and_one_the_server_closed_is_not_reused():
    """A connection per request cost the client more CPU than the request (and over https a TLS handshake): each
    of 64 requests to a server holding four at once reuses one of a few connections. Those the server closes when
    idle (vLLM's uvicorn after 5 s) are found before use: the next call neither fails nor logs a dropped request."""
    params = SamplingParams(max_new_tokens=4)
    with running(FleetConfig(servers=1, concurrency=4, latency=0.05, idle_timeout=0.3)) as fleet:
        backend = OpenAICompatBackend("sim", fleet.urls, concurrency=4)
        assert len(backend.generate(CHATS, params)) == 64
        [stats] = fleet.stats()
        assert sum(stats.requests.values()) == 64 and stats.connections <= 8
        time.sleep(0.6)  # every kept connection is now closed by the server
        assert len(backend.generate(CHATS, params)) == 64
        assert sum(stats.requests.values()) == 128 and stats.connections <= 16
    assert backend.incidents == {}


def test_eight_chats_share_one_scoring_request_and_each_keeps_its_own_scores():
    """A label is two chats; a completions request for each was half a label's requests, each mostly HTTP's own
    CPU. Grouped, each chat still gets the scores of its own tokens, and holds a slot of the server as its own
    request would (vLLM batches a request's prompts as sequences of their own)."""
    with running(FleetConfig(servers=2, concurrency=8)) as fleet:
        backend = OpenAICompatBackend("sim", fleet.urls, concurrency=4)
        scores = backend.score_options(CHATS, ["A", "B"])
        requests = sum((s.requests for s in fleet.stats()), Counter())
        peaks = [s.peak_in_flight for s in fleet.stats()]
    assert backend.scoring == EXACT
    assert requests == {"/tokenize": 64 + 2, "/completions": 64 // SCORE_CHATS_PER_REQUEST}
    option_ids = [tokenize("A")[0], tokenize("B")[0]]
    for chat, row in zip(CHATS, scores, strict=True):
        expected = next_token_logprobs(chat_tokens(chat), option_ids)
        assert row == [expected[t] for t in option_ids]
    assert max(peaks) == 8  # a request of 8 prompts holds 8 of a server's 8 slots


def test_a_dead_server_is_routed_around_and_said_so(caplog):
    with running(FleetConfig(servers=2, concurrency=8)) as fleet:
        fleet.kill(1)
        backend = OpenAICompatBackend("sim", fleet.urls, concurrency=4)
        with caplog.at_level(logging.WARNING, logger="cai_core"):
            out = backend.generate(CHATS, SamplingParams(max_new_tokens=4))
        served = [sum(s.requests.values()) for s in fleet.stats()]
    assert len(out) == 64 and served == [64, 0]
    # only the requests sent before the first refusal came back met the dead server; then it was passed over
    assert 1 <= backend.incidents["refused"] <= 4, backend.incidents
    assert f"{fleet.urls[1]} is down" in caplog.text


def test_a_server_on_this_machine_is_reached_past_the_environments_proxy():
    """The engine service's key must not go to a proxy: with `http_proxy` pointing nowhere and no `no_proxy`, a
    loopback server is still reached directly. A new process, since urllib reads the proxies when it is set up."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env["http_proxy"] = "http://127.0.0.1:9"  # the discard port: nothing answers there
    with running(FleetConfig(servers=1, concurrency=4)) as fleet:
        code = (
            "from cai_core.backends.openai_compat import EXACT, SCORE_CHATS_PER_REQUEST, OpenAICompatBackend\n"
            "from cai_core.backends.base import SamplingParams\n"
            f"backend = OpenAICompatBackend('sim', {fleet.urls!r}, max_retries=0)\n"
            "print(len(backend.generate([[{'role': 'user', 'content': 'hi'}]], SamplingParams(max_new_tokens=2))))"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-500:]
