"""RL rollouts from vLLM: the engine samples what the policy would, before and after an update, and a run
records which engine sampled its rollouts. The tiny model here has one 64-wide head: vLLM's CPU attention
refuses the default tiny model's 16-wide heads."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter

import pytest
import torch

from cai_core import jobs
from cai_core.train import TrainError, train
from cai_core.train.grpo import GRPOConfig, RLOOConfig
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
# PPO (ours, its own checkpoint) is killed; GRPO and RLOO (TRL's Trainers, whose resume other tests cover) run once
# on vLLM here: every killed run costs one more vLLM start, a minute or two of this CI's one vLLM worker.
@pytest.mark.parametrize(("config_type", "kill"), [(PPOConfig, True), (GRPOConfig, False), (RLOOConfig, False)])
def test_an_rl_run_on_vllm_rollouts_killed_after_a_checkpoint_resumes_and_records_its_engine(
    vllm_tiny_model, workspace, tmp_path, config_type, kill, monkeypatch
):
    """Started as the Train page starts a run (`cai resume`, detached), killed with -9 once its step-2 checkpoint
    is saved, then resumed here: it finishes from that checkpoint, sampling on vLLM both times. Not `kill`: run
    here once, its rollouts sampled by TRL's vLLM engine."""
    import pandas as pd

    monkeypatch.setenv("CAI_VLLM_EAGER", "1")
    prompts = tmp_path / "prompts.jsonl"
    pd.DataFrame([{"prompt": f"How do I bake bread {i}?"} for i in range(8)]).to_json(
        prompts, orient="records", lines=True
    )
    extra = {"num_generations": 2} if issubclass(config_type, GRPOConfig) else {}
    config = config_type(
        model=vllm_tiny_model,
        dataset=str(prompts),
        reward_model="tests.train_rewards:low_ids",
        max_steps=3 if kill else 2,
        save_steps=2,
        batch_size=4,
        max_new_tokens=6,
        learning_rate=1e-3,
        rollout_engine="vllm",
        **extra,
    )
    if kill:
        job = jobs.prepare(jobs.training_kind_name(config.kind), config, workspace)
        process = jobs.launch(job, workspace)
        saved = job.path / "checkpoints" / "checkpoint-2"
        deadline = time.monotonic() + 1200  # a hang's bound: a vLLM start at a load of 13 took over 10 minutes here
        try:
            # the last file each writes: PPO's state (its folder is renamed into place whole), the Trainer's (TRL's)
            while not ((saved / "state.pt").exists() or (saved / "trainer_state.json").exists()):
                assert process.poll() is None, f"it ended before its checkpoint: {job.log_tail()}"
                assert time.monotonic() < deadline, f"no checkpoint to kill after: {job.log_tail()}"
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):  # a run that ended early may have left no process
                os.killpg(process.pid, signal.SIGKILL)  # its group: vLLM's engine process too
            process.wait()
        killed = job.progress()
        assert killed.status == "failed" and killed.done < config.max_steps

    calls = Counter()
    if not kill:
        # the run's record says what it asked for; this, that TRL's engine sampled and was handed the new weights
        from trl.generation.vllm_generation import VLLMGeneration

        for name in ("generate", "sync_weights"):
            original = getattr(VLLMGeneration, name)

            def spy(self, *args, _name=name, _original=original, **kwargs):
                calls[_name] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(VLLMGeneration, name, spy)

    process_group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    before = {name: os.environ.get(name) for name in process_group}
    job = train(config, workspace)  # the same config and data: the same run, resumed
    assert job.progress().status == "done", job.progress().message
    assert (job.path / "final" / "config.json").exists()
    if kill:
        logged = Counter(r["step"] for r in job.read("train_metrics") if r["name"] == "reward")
        assert logged[1] == logged[2] == 1 and logged[3] >= 1  # steps 1 and 2 were not trained again
    else:
        assert calls["generate"] and calls["sync_weights"], calls
    starts = 2 if kill else 1
    assert job.read("rollouts") == [{"engine": "vllm", "rollout_engine": "vllm"}] * starts  # each sampled on vLLM
    # TRL's colocate engine wrote its rank into this process's environment: a job started next would inherit it
    # and take itself for one rank of a distributed run
    assert {name: os.environ.get(name) for name in process_group} == before


def test_auto_samples_rollouts_on_transformers_on_a_cpu_and_a_bad_engine_names_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PPOConfig().rollouts_on() == "hf" and GRPOConfig().rollouts_on() == "hf"
    with pytest.raises(TrainError, match="rollout_engine"):
        PPOConfig(rollout_engine="sglang").check()
