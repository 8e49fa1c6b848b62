"""RL rollouts from vLLM: the engine samples what the policy would, before and after an update, and a run
records which engine sampled its rollouts. The tiny model here has one 64-wide head: vLLM's CPU attention
refuses the default tiny model's 16-wide heads."""

from __future__ import annotations

import os

import pytest
import torch

from cai_core.train import TrainError, train
from cai_core.train.grpo import GRPOConfig
from cai_core.train.ppo import PPOConfig

from .conftest import NEEDS_VLLM
from .tiny_model import build_tiny_model

CHATS = [[{"role": "user", "content": "How do I bake bread?"}], [{"role": "user", "content": "Hello there"}]]


@pytest.fixture(scope="module")
def vllm_tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-64"), head_dim=64))


def greedy(policy, prompts, eos, new_tokens=12):
    answers = []
    with torch.no_grad():
        for ids in prompts:
            out = policy.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=eos
            )
            answers.append(out[0, len(ids) :].tolist())
    return answers


@pytest.mark.vllm
@pytest.mark.slow
@NEEDS_VLLM
def test_the_engine_samples_what_the_policy_would_before_and_after_an_update(vllm_tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai_core.train.rollouts import VLLMRollouts

    monkeypatch.setenv("CAI_VLLM_EAGER", "1")
    tok = AutoTokenizer.from_pretrained(vllm_tiny_model)
    policy = AutoModelForCausalLM.from_pretrained(vllm_tiny_model)
    prompts = [list(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)["input_ids"]) for c in CHATS]
    engine = VLLMRollouts(vllm_tiny_model, "float32")
    sample = {"temperature": 0.0, "max_new_tokens": 12, "eos": tok.eos_token_id, "seed": 0}
    before = greedy(policy, prompts, tok.eos_token_id)
    assert engine.sample(prompts, **sample) == before

    # one large step towards the first answer's likelihood falling: the greedy answers change
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(policy.parameters(), lr=5.0)
    batch = torch.tensor([prompts[0] + before[0]])
    (-policy(batch, labels=batch).loss).backward()
    optimizer.step()
    after = greedy(policy, prompts, tok.eos_token_id)
    assert after != before
    assert engine.sample(prompts, **sample) == before  # not yet handed the new weights
    engine.sync(policy)
    assert engine.sample(prompts, **sample) == after


@pytest.mark.vllm
@pytest.mark.slow
@NEEDS_VLLM
@pytest.mark.parametrize("config_type", [PPOConfig, GRPOConfig])
def test_an_rl_run_on_vllm_rollouts_records_its_engine(vllm_tiny_model, workspace, tmp_path, config_type, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("CAI_VLLM_EAGER", "1")
    prompts = tmp_path / "prompts.jsonl"
    pd.DataFrame([{"prompt": f"How do I bake bread {i}?"} for i in range(8)]).to_json(
        prompts, orient="records", lines=True
    )
    extra = {"num_generations": 2} if config_type is GRPOConfig else {}
    process_group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    before = {name: os.environ.get(name) for name in process_group}
    job = train(
        config_type(
            model=vllm_tiny_model,
            dataset=str(prompts),
            reward_model="tests.train_rewards:low_ids",
            max_steps=2,
            batch_size=4,
            max_new_tokens=6,
            learning_rate=1e-3,
            rollout_engine="vllm",
            **extra,
        ),
        workspace,
    )
    assert job.progress().status == "done", job.progress().message
    assert job.read("rollouts") == [{"engine": "vllm", "rollout_engine": "vllm"}]
    # TRL's colocate engine wrote its rank into this process's environment: a job started next would inherit it
    # and take itself for one rank of a distributed run
    assert {name: os.environ.get(name) for name in process_group} == before


def test_auto_samples_rollouts_on_transformers_on_a_cpu_and_a_bad_engine_names_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PPOConfig().rollouts_on() == "hf" and GRPOConfig().rollouts_on() == "hf"
    with pytest.raises(TrainError, match="rollout_engine"):
        PPOConfig(rollout_engine="sglang").check()
