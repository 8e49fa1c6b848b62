"""The vLLM engine against the transformers one, on the real default model in fp32.

One vLLM engine serves the whole test session (`load_backend` keeps it): its start-up costs tens of
seconds on a CPU. Skipped where vLLM is not installed (`make setup` installs it on Linux x86-64)."""

from __future__ import annotations

import json

import pytest

from cai_core import jobs
from cai_core.backends import BackendError, SamplingParams, load_backend
from cai_core.critique import GenerateConfig
from cai_core.feedback import Judge
from cai_core.workspace import PROJECT_ROOT

from .conftest import JUDGED_PAIRS, REAL_VLLM

pytestmark = REAL_VLLM

CHATS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Give me three tips for sleeping better."}],
]


@pytest.fixture(scope="session")
def hf(default_model_path):
    return load_backend(f"hf:{default_model_path}", dtype="float32")


@pytest.fixture(scope="session")
def vllm(default_model_path):
    return load_backend(f"vllm:{default_model_path}", dtype="float32")


def test_both_engines_give_the_same_greedy_text_in_fp32(hf, vllm):
    params = SamplingParams(max_new_tokens=32, temperature=0.0)
    ours, theirs = hf.generate(CHATS, params), vllm.generate(CHATS, params)
    assert [g.text for g in theirs] == [g.text for g in ours]
    assert [g.prompt_tokens for g in theirs] == [g.prompt_tokens for g in ours]
    assert [g.completion_tokens for g in theirs] == [g.completion_tokens for g in ours]
    assert vllm.engine == "vllm" and vllm.name == hf.name


def test_the_engine_counts_each_chat_as_it_finishes(vllm):
    finished: list[int] = []
    vllm.generate(CHATS, SamplingParams(max_new_tokens=8, temperature=0.0), on_done=finished.append)
    assert sum(finished) == len(CHATS) and all(n >= 1 for n in finished)


def test_sampling_honours_seed_and_lengths(vllm):
    params = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=1.0, top_p=0.9, seed=5)
    first = vllm.generate(CHATS, params)
    assert all(g.completion_tokens == 6 for g in first)
    assert [g.text for g in vllm.generate(CHATS, params)] == [g.text for g in first]
    assert [g.text for g in vllm.generate(CHATS, SamplingParams(6, 1.0, 0.9, seed=6, min_new_tokens=6))] != [
        g.text for g in first
    ]


def test_option_scores_equal_the_transformers_ones(hf, vllm):
    options = ["A", "B", " I cannot help with that"]  # single tokens and a multi-token option
    ours, theirs = hf.score_options(CHATS, options), vllm.score_options(CHATS, options)
    for row_hf, row_vllm in zip(ours, theirs, strict=True):
        assert row_vllm == pytest.approx(row_hf, abs=2e-3)


def test_the_judges_p_a_agrees_between_engines_on_hh_rlhf_pairs(judged_on_transformers, vllm):
    constitution, items, ours = judged_on_transformers
    theirs = Judge(vllm, constitution).label(items)
    gaps = [abs(a.p_a - b.p_a) for a, b in zip(ours, theirs, strict=True)]
    assert len(gaps) == JUDGED_PAIRS and max(gaps) < 0.02, f"largest gap {max(gaps):.4f}"
    assert len({round(v.p_a, 3) for v in theirs}) > JUDGED_PAIRS // 2  # real, varied judgments


def test_a_job_records_its_engine_and_resumes_on_the_other(vllm, default_model_path, workspace, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": c[0]["content"]}) + "\n" for i, c in enumerate(CHATS))
    )
    config = GenerateConfig(
        constitution=str(PROJECT_ROOT / "constitutions" / "hhh.yaml"),
        prompts=str(prompts),
        model=f"vllm:{default_model_path}",  # the session's engine
        rounds=1,
        max_new_tokens=8,
        temperature=0.0,
        few_shot=False,
        dtype="float32",
        run_id="both-engines",
    )
    job = jobs.run("generate", config, workspace)
    assert job.spec["engines"] == {"policy": ["vllm"], "critic": ["vllm"]}
    steps = job.records_path("trace_steps").read_text().splitlines(keepends=True)
    assert len(steps) == 2 * len(CHATS)  # one step per round: the answer, then critique and revision
    # as if killed after the answers: the rounds are redone on transformers, under the same run id
    job.records_path("trace_steps").write_text("".join(steps[: len(CHATS)]))
    job = jobs.run("generate", GenerateConfig(**{**vars(config), "model": f"hf:{default_model_path}"}), workspace)
    assert job.progress().status == "done" and len(job.read("trace_steps")) == 2 * len(CHATS)
    assert job.spec["engines"] == {"policy": ["vllm", "hf"], "critic": ["vllm", "hf"]}
    assert job.engines() == "vllm, then hf"


def test_a_folder_vllm_cannot_load_is_named_with_the_engine(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(BackendError, match=r"engine vllm could not start .*hf:MODEL"):
        load_backend(f"vllm:{tmp_path}")


def test_a_missing_model_path_is_named(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        load_backend(f"vllm:{tmp_path / 'nothing'}")
