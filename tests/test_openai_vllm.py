"""The `openai:` backend against real vLLM OpenAI servers on loopback, checked against the transformers
engine on the same default model in fp32: generation, log-prob judging, and two servers as a fleet.
Skipped where vLLM is not installed (`make setup` installs it on Linux x86-64)."""

from __future__ import annotations

import pytest

from cai_core.backends import SamplingParams, load_backend
from cai_core.backends.openai_compat import EXACT, OpenAICompatBackend
from cai_core.feedback import Judge
from cai_core.workspace import PROJECT_ROOT

from .conftest import JUDGED_PAIRS, REAL_VLLM
from .openai_server import kill_vllm_server, served_requests, vllm_servers

pytestmark = REAL_VLLM

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


def test_option_scores_through_a_real_server_are_the_local_engines(fleet, hf):
    """Exact, as in-process: single letters and a multi-token option, none of them read from a top-20 list."""
    options = ["A", "B", " I cannot help with that"]
    server = load_backend(f"openai:smol@{fleet[0]}")
    remote, local = server.score_options(CHATS, options), hf.score_options(CHATS, options)
    assert server.scoring == EXACT
    for row_remote, row_local in zip(remote, local, strict=True):
        assert row_remote == pytest.approx(row_local, abs=2e-3)


def test_the_judges_p_a_through_a_real_server_agrees_on_hh_rlhf_pairs(fleet, judged_on_transformers):
    """Read from the top 20 first tokens, 2 of 12 pairs came out at exactly 0 or 1 (a letter outside the list);
    scored exactly, every pair is within 0.02 of the local judge (transformers in fp32, which the in-process vLLM
    engine matches within 0.02 in test_backend_vllm.py), over both servers of the fleet."""
    constitution, items, local = judged_on_transformers
    remote = Judge(load_backend(f"openai:smol@{','.join(fleet)}"), constitution).label(items)
    gaps = [abs(a.p_a - b.p_a) for a, b in zip(remote, local, strict=True)]
    assert len(gaps) == JUDGED_PAIRS and max(gaps) < 0.02, f"largest gap {max(gaps):.4f}"
    assert all(0 < label.p_a < 1 for label in remote)


def test_two_servers_serve_as_one_fleet(fleet):
    before = [served_requests(url) for url in fleet]
    out = load_backend(f"openai:smol@{','.join(fleet)}").generate(CHATS * 2, SamplingParams(max_new_tokens=4))
    assert len(out) == 8 and all(g.completion_tokens > 0 for g in out)
    served = [served_requests(url) - b for url, b in zip(fleet, before, strict=True)]
    assert sum(served) == 8 and min(served) >= 2, served  # both servers took a share


def test_a_server_takes_seeded_prompts_longer_than_one_engine_step(fleet):
    """What failed the kill test below in CI: on a CPU, vLLM (0.32) splits a prompt longer than its step's token
    budget (2048 by default there) over several steps (chunked prefill), and for a seeded request that kills its
    EngineCore ("CPU Generator does not use offset"): HTTP 500, then no server. The survivor of a kill took the
    rerouted critiques and revisions (about 600 tokens each with the few-shot examples) at once, more than fit a
    step. Every job's request is seeded. Here each prompt alone is over 2048 tokens: the split is not left to timing."""
    chats = [
        [{"role": "user", "content": f"Summarise notes {i}. " + " ".join(f"note {i}.{j} is fine;" for j in range(260))}]
        for i in range(3)
    ]
    # its own client, so that its incidents are this test's; 7,500 prompt tokens take minutes on a loaded CPU
    server = OpenAICompatBackend("smol", [fleet[0]], timeout=600)
    out = server.generate(chats, SamplingParams(max_new_tokens=4, temperature=0.7, seed=3))
    assert all(g.prompt_tokens > 2048 and g.completion_tokens > 0 for g in out), out
    assert not [kind for kind in server.incidents if kind.startswith("HTTP 5") or kind == "refused"], server.incidents


def test_a_job_on_two_servers_finishes_on_one_when_the_other_is_killed(fleet, tmp_path):
    """Issue 26 item 4: a generation job spread over two real vLLM servers; one is `kill -9`ed once the job is a
    third done, and the job finishes on the other with every trace step stored once, the loss in its log.
    Last in this module: it kills one of the module's servers."""
    from cai_core import jobs
    from cai_core.critique import GenerateConfig
    from cai_core.workspace import Workspace

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Name a fruit that is {c} in colour, case {i}.\n" for i, c in enumerate("ab" * 8)))
    config = GenerateConfig(
        constitution=str(PROJECT_ROOT / "constitutions" / "hhh.yaml"),
        prompts=str(prompts),
        model=f"openai:smol@{','.join(fleet)}",
        rounds=1,
        max_new_tokens=8,
        chunk_size=4,
        early_stop=False,
    )
    before = [served_requests(url) for url in fleet]
    at_kill: list[int] = []

    def kill_one_at_a_third(done: int, total: int) -> None:
        if not at_kill and done >= total / 3:
            at_kill.extend(served_requests(url) - b for url, b in zip(fleet, before, strict=True))
            kill_vllm_server(fleet[1])

    job = jobs.run("generate", config, Workspace(tmp_path / "data"), on_progress=kill_one_at_a_third)
    progress = job.progress()
    assert progress.status == "done" and progress.done == progress.total == 32, progress
    assert min(at_kill) > 0, at_kill  # both servers had taken a share before one died
    steps = [(row["trace_id"], row["round"]) for row in job.read("trace_steps")]
    assert len(steps) == len(set(steps)) == 32  # nothing lost, nothing doubled
    assert len(job.read("traces")) == 16
    log = (job.path / "log.txt").read_text()
    assert f"{fleet[1]} is down" in log, log
