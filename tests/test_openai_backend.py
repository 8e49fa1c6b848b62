"""OpenAICompatBackend against a real HTTP server (tests/openai_server.py) that answers with the tiny model."""

from __future__ import annotations

import math
import time

import pytest

from cai_core.backends.base import BackendError, SamplingParams
from cai_core.backends.hf import HFBackend
from cai_core.backends.openai_compat import TOP_20, OpenAICompatBackend

from .openai_server import dead_url, serve

# Sampling, because the untrained tiny model's greedy reply is only newlines, which strip to "".
PARAMS = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)
CHATS = [
    [{"role": "user", "content": text}]
    for text in ["Hi", "How do I bake bread?", "Which response is less harmful? (A) or (B)", "Rewrite it."]
]


@pytest.fixture(scope="module")
def local(tiny_model_path) -> HFBackend:
    return HFBackend(tiny_model_path, device="cpu")


def client(*urls: str, model: str = "tiny", **kwargs) -> OpenAICompatBackend:
    kwargs = {"timeout": 10.0, "backoff": 0.01, **kwargs}
    return OpenAICompatBackend(model, list(urls), **kwargs)


def test_generate_returns_one_text_per_chat_in_order(local):
    answered: list[int] = []
    with serve(local) as server:
        out = client(server.url + "/").generate(CHATS, PARAMS, on_done=answered.append)
        assert server.requests == len(CHATS)
    assert answered == [1] * len(CHATS)  # each reply counted as it came, for a job's progress
    assert all(g.text for g in out)
    # The prompts differ in length, so the relayed token counts show which answer went where.
    assert [g.prompt_tokens for g in out] == [len(ids) for ids in local._encode(CHATS)]
    assert [g.text for g in out] == [local.generate([c], PARAMS)[0].text for c in CHATS]
    assert all(g.completion_tokens > 0 and g.seconds > 0 for g in out)


def test_requests_are_spread_over_the_fleet(local):
    with serve(local) as a, serve(local) as b:
        out = client(a.url, b.url).generate(CHATS, PARAMS)
        assert (a.requests, b.requests) == (2, 2)
    assert len(out) == len(CHATS)


def test_a_dead_server_in_the_fleet_is_routed_around(local):
    with serve(local) as live:
        out = client(dead_url(), live.url).generate(CHATS, PARAMS)
        assert live.requests == len(CHATS)
    assert all(g.text for g in out)


@pytest.mark.parametrize("status", [503, 429])
def test_overloaded_server_is_retried(local, status):
    with serve(local) as server:
        server.fail_next(2, status=status)
        out = client(server.url).generate(CHATS, PARAMS)
        assert server.requests == len(CHATS) + 2
    assert all(g.text for g in out)


def test_unreachable_fleet_fails_fast_naming_the_url():
    url = dead_url()
    began = time.perf_counter()
    with pytest.raises(BackendError, match=rf"could not reach .*{url}.* after 4 tries"):
        client(url, timeout=2.0, max_retries=3).generate(CHATS[:1], PARAMS)
    assert time.perf_counter() - began < 5


def test_a_rejected_request_fails_at_once(local):
    with serve(local) as server:
        with pytest.raises(BackendError, match=r"HTTP 400.*'no-such-model' is not served") as caught:
            client(server.url, model="no-such-model", backoff=1.0).generate(CHATS[:1], PARAMS)
        assert server.requests == 1
    assert server.url in str(caught.value)


def test_score_options_over_http_matches_the_local_model(local):
    tok = local.tokenizer
    # Every vocabulary entry whose text encodes back to exactly that one token: a single-token option.
    singles = [
        text
        for i in range(len(tok))
        if i not in tok.all_special_ids and tok(text := tok.decode([i]), add_special_tokens=False)["input_ids"] == [i]
    ]
    chats = CHATS[:2]
    full = local.score_options(chats, singles)
    ranked = [sorted(range(len(singles)), key=lambda j: -row[j]) for row in full]
    likely = [singles[j] for j in set(ranked[0][:10]) & set(ranked[1][:10])]
    unlikely = singles[ranked[0][-1]]  # far outside the top 20 the server reports
    assert len(likely) >= 2, "the tiny model's top tokens should overlap between two prompts"
    options = [*likely, unlikely]

    with serve(local) as server:
        backend = client(server.url)
        remote = backend.score_options(chats, options)
    assert backend.scoring == TOP_20  # this server has no /tokenize, as OpenAI's and llama.cpp's chat APIs
    expected = local.score_options(chats, likely)
    for got, want in zip(remote, expected, strict=True):
        assert got[:-1] == pytest.approx(want, abs=1e-4)
        assert got[-1] == -math.inf


def test_server_without_logprobs_is_a_clear_error(local):
    with serve(local, logprobs=False) as server, pytest.raises(BackendError, match="log-probabilities"):
        client(server.url).score_options(CHATS[:1], ["A", "B"])


def test_an_answer_streams_over_http_piece_by_piece_into_generates_text(local):
    params = SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=1.0, seed=3)
    with serve(local) as server:
        server.fail_next(1)  # a failure before the answer starts is retried, as any request is
        pieces = list(client(server.url).stream(CHATS[1], params))
        assert server.requests == 2
    assert len(pieces) > 1
    assert "".join(pieces) == local.generate([CHATS[1]], params)[0].text
