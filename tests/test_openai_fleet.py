"""The `openai:` client against a simulated fleet (tests/fleet.py): what a fleet needs from it, at small size."""

from __future__ import annotations

import logging

from cai_core.backends.base import SamplingParams
from cai_core.backends.openai_compat import OpenAICompatBackend

from .fleet import FleetConfig, running

CHATS = [[{"role": "user", "content": f"question {i}"}] for i in range(64)]


def test_every_server_is_kept_as_busy_as_the_client_allows():
    """Concurrency is per server: four servers each hold four requests at once (before: eight in all, two each)."""
    with running(FleetConfig(servers=4, concurrency=8, latency=0.2)) as fleet:
        out = OpenAICompatBackend("sim", fleet.urls, concurrency=4).generate(CHATS, SamplingParams(max_new_tokens=4))
        peaks = [s.peak_in_flight for s in fleet.stats()]
    assert len(out) == 64
    assert peaks == [4, 4, 4, 4]


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
