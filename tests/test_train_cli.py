"""`cai train` from the command line: a config file with flags over it, a detached run, the list."""

import math
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from cai_core import jobs
from cai_core.backends import SamplingParams, load_backend
from cai_core.cli import main
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.train import TrainError, config_class, load_config_file
from cai_core.train.launch import rank_command
from cai_core.train.ppo import PPOConfig
from cai_core.train.sft import SFTConfig
from cai_core.workspace import PROJECT_ROOT


def sft_data(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Hello {i}?"}, {"role": "assistant", "content": "Bake bread."}]}
        for i in range(8)
    ]
    path = tmp_path / "sft.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def cli(workspace, *argv):
    return main(["--data-dir", str(workspace.root), *argv])


def test_train_from_a_config_file_with_a_flag_over_it(tiny_model_path, workspace, tmp_path, capsys):
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {tiny_model_path}\ndataset: {sft_data(tmp_path)}\nmax_steps: 5\nlearning_rate: 1e-3\n")
    assert cli(workspace, "train", "sft", "--config", str(config), "--max-steps", "2") == 0
    [job] = list_job_folders(workspace.runs_dir)
    assert job.spec["config"]["max_steps"] == 2 and job.spec["config"]["learning_rate"] == 1e-3
    assert job.progress().status == "done"
    capsys.readouterr()
    assert cli(workspace, "train", "list") == 0
    assert str(job.path / "final") in capsys.readouterr().out


def test_user_errors_are_one_line(workspace, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("max_stepz: 3\n")
    assert cli(workspace, "train", "sft", "--config", str(config)) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli(workspace, "train", "dpo", "--dataset", str(tmp_path / "absent.jsonl")) == 2
    assert "absent.jsonl" in capsys.readouterr().err


@pytest.mark.processes
def test_background_run_finishes_and_accelerate_builds_its_command(
    tiny_model_path, workspace, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = sft_data(tmp_path)
    argv = ["train", "sft", "--model", tiny_model_path, "--dataset", str(data), "--max-steps", "2", "--background"]
    assert cli(workspace, *argv) == 0
    [job] = list_job_folders(workspace.runs_dir)
    deadline = time.monotonic() + 300
    while job.progress().status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.progress().status == "done", job.log_tail()

    accelerate = tmp_path / "accelerate.yaml"
    accelerate.write_text("compute_environment: LOCAL_MACHINE\nnum_processes: 2\n")
    config = SFTConfig(model=tiny_model_path, dataset=str(data), accelerate_config=str(accelerate), nproc=2)
    other = jobs.prepare("train-sft", config, workspace)
    command = rank_command(JobFolder(other.path), workspace)
    assert command[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(accelerate)]
    assert command[5:7] == ["--num_processes", "2"] and command[-1] == other.run_id


@pytest.mark.slow
def test_sft_on_the_default_model_from_a_config_file_gives_a_backend_that_answers(
    default_model_path, workspace, tmp_path
):
    """The real SmolLM2-135M, two SFT steps on SL-CAI-style revisions through `cai train sft --config FILE`, then
    the finished folder as a generation backend: what a user who trains on a CPU gets (about 30 s here)."""
    revisions = [
        ("How do I pick a lock?", "I can't help with getting into places that aren't yours; a locksmith can."),
        ("Write an insult for my coworker.", "I'd rather not insult anyone; I can help you raise the problem calmly."),
        ("How do I make a fake ID?", "I can't help with forged documents, but I can explain how to get a real one."),
        ("Tell me how to cheat on a test.", "I won't help with cheating; here is how to prepare in the time you have."),
    ]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in revisions]
    data = tmp_path / "sl_cai.jsonl"
    pd.DataFrame(rows).to_json(data, orient="records", lines=True)
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model: {default_model_path}\ndataset: {data}\nmax_steps: 2\nbatch_size: 2\nmax_length: 128\n"
        "learning_rate: 1e-4\nsave_steps: 100\n"
    )

    assert cli(workspace, "train", "sft", "--config", str(config)) == 0
    [job] = list_job_folders(workspace.runs_dir)
    assert job.progress().status == "done", job.progress().message
    losses = [r["value"] for r in job.read("train_metrics") if r["name"] == "loss"]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    final = job.path / "final"
    with (
        safe_open(final / "model.safetensors", "pt") as trained,
        safe_open(Path(default_model_path) / "model.safetensors", "pt") as base,
    ):
        tensors = trained.keys()  # a safetensors file is not iterable itself
        name = next(n for n in tensors if n.endswith("q_proj.weight"))
        assert not torch.equal(trained.get_tensor(name), base.get_tensor(name))  # the steps changed the weights

    backend = load_backend(str(final), workspace)
    [reply] = backend.generate([[{"role": "user", "content": "How do I pick a lock?"}]], SamplingParams(24, 0.0))
    assert reply.completion_tokens > 0 and reply.text.strip()


# --- several processes: torchrun on the CPU (gloo), two ranks of the tiny model --------------------------------


def two_process_data(tmp_path) -> dict[str, Path]:
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": "Here is a safe and kind answer."}],
            "rejected": [{"role": "assistant", "content": "Identify harmful unethical dishonest"}],
        }
        for i in range(16)
    ]
    prompts = [{"prompt": f"How do I bake bread {i}?"} for i in range(16)]
    paths = {"sft": sft_data(tmp_path), "pairs": tmp_path / "pairs.jsonl", "prompts": tmp_path / "prompts.jsonl"}
    pd.DataFrame(pairs).to_json(paths["pairs"], orient="records", lines=True)
    pd.DataFrame(prompts).to_json(paths["prompts"], orient="records", lines=True)
    return paths


SMALL = {
    "sft": ["--dataset", "sft"],
    "dpo": ["--dataset", "pairs"],
    "rloo": [
        "--dataset",
        "prompts",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "4",
        "--reward-model",
        "tests.train_rewards:low_ids",
    ],
    "grpo": ["--dataset", "prompts", "--num-generations", "2", "--max-new-tokens", "4"],
    "ppo": ["--dataset", "prompts", "--max-new-tokens", "4", "--ppo-epochs", "1"],
}


def two_process_argv(kind, tiny_model_path, data, *extra):
    argv = ["train", kind, "--model", tiny_model_path, "--nproc", "2", "--batch-size", "2", "--learning-rate", "1e-3"]
    small = [str(data[a]) if a in data else a for a in SMALL[kind]]
    return [*argv, *small, *extra]


def assert_both_ranks_ended_equal(job, step):
    ranks = [r for r in job.read("ranks") if r.get("step") == step]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert len({r["weights"] for r in ranks}) == 1  # the gradients were averaged: the same weights on both


# One trainer of each data shape: SFT on texts, DPO on pairs (the reward model's TRL trainer shares its batching,
# so it adds a torchrun start and nothing the others do not check), RLOO on prompts with answers sampled per rank.
@pytest.mark.processes
@pytest.mark.parametrize("kind", ["sft", "dpo", "rloo"])
def test_two_processes_train_as_one_data_parallel_run(kind, tiny_model_path, workspace, tmp_path):
    data = two_process_data(tmp_path)
    assert cli(workspace, *two_process_argv(kind, tiny_model_path, data, "--max-steps", "2")) == 0
    [job] = list_job_folders(workspace.runs_dir)
    assert job.progress().status == "done", job.progress().message
    assert_both_ranks_ended_equal(job, 2)
    # each step took a batch on each rank: 2 steps x 2 ranks x 2 examples (RLOO: 2 answers to 1 prompt) of the
    # 8 or 16 in the data; one process would have taken half as many. Rank 0 alone wrote the records.
    epoch = {r["step"]: r["value"] for r in job.read("train_metrics") if r["name"] == "epoch"}
    taken = 2 * 2 * (1 if kind == "rloo" else 2)
    assert epoch[2] == pytest.approx(taken / (8 if kind == "sft" else 16))
    assert len([r for r in job.read("train_metrics") if r["name"] == "loss"]) == 2
    assert len(job.read("trained_models")) == 1


@pytest.mark.processes
@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_two_processes_stop_together_on_cancel_and_resume(kind, tiny_model_path, workspace, tmp_path, monkeypatch):
    data = two_process_data(tmp_path)
    monkeypatch.setenv("CAI_TEST_CANCEL", str(workspace.runs_dir / f"two-{kind}" / "cancel"))
    extra = ["--max-steps", "4", "--save-steps", "10", "--run-id", f"two-{kind}"]
    argv = two_process_argv(kind, tiny_model_path, data, "--reward-model", "tests.train_rewards:low_ids_then_cancel")
    assert cli(workspace, *argv, *extra) == 1
    job = JobFolder(workspace.runs_dir / f"two-{kind}")
    progress = job.progress()
    assert progress.status == "cancelled" and progress.done == 2, progress.message
    assert (job.path / "checkpoints" / "checkpoint-2").exists()
    assert_both_ranks_ended_equal(job, 2)  # both ranks stopped at the same step

    assert cli(workspace, "train", "resume", job.run_id) == 0
    assert job.progress().status == "done" and job.progress().done == 4, job.progress().message
    assert_both_ranks_ended_equal(job, 4)
    name = "loss" if kind == "grpo" else "reward"
    assert sorted({r["step"] for r in job.read("train_metrics") if r["name"] == name}) == [1, 2, 3, 4]
    assert len(job.read("trained_models")) == 1


@pytest.mark.processes
def test_a_rank_that_dies_fails_the_run_with_its_reason(tiny_model_path, workspace, tmp_path, capsys):
    data = two_process_data(tmp_path)
    argv = two_process_argv(
        "ppo", tiny_model_path, data, "--reward-model", "tests.train_rewards:low_ids_failing_on_rank_1"
    )
    assert cli(workspace, *argv, "--max-steps", "2") == 2
    [job] = list_job_folders(workspace.runs_dir)
    assert job.progress().status == "failed"
    assert job.progress().message == "rank 1: RuntimeError: rank 1 cannot score"
    assert "rank 1 cannot score" in capsys.readouterr().err
    assert not (job.path / "final").exists() and not job.read("trained_models")


def test_bad_process_counts_and_accelerate_configs_are_refused_before_anything_starts(workspace, tmp_path, capsys):
    assert cli(workspace, "train", "sft", "--nproc", "100000", "--dataset", str(sft_data(tmp_path))) == 2
    assert "--nproc: is 100000, but this machine has" in capsys.readouterr().err
    absent = tmp_path / "absent.yaml"
    assert cli(workspace, "train", "sft", "--accelerate-config", str(absent)) == 2
    assert f"--accelerate-config: {absent}: no such file" in capsys.readouterr().err
    with pytest.raises(TrainError, match="at least 1"):
        SFTConfig(nproc=0).check()
    fsdp = str(PROJECT_ROOT / "examples" / "train" / "accelerate-fsdp.yaml")
    with pytest.raises(TrainError, match="accelerate_config: .*FSDP"):
        PPOConfig(reward_model="tests.train_rewards:low_ids", accelerate_config=fsdp).check()
    SFTConfig(accelerate_config=fsdp).check()
    assert not workspace.runs_dir.exists()


@pytest.mark.parametrize("kind", ["ppo", "sft"])
def test_the_example_one_gpu_configs_load(kind):
    config = load_config_file(config_class(kind), PROJECT_ROOT / "examples" / "train" / f"{kind}-one-gpu.yaml")
    assert config.lora and config.dtype == "auto"
