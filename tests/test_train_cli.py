"""`cai train` from the command line: a config file with flags over it, a detached run, the list."""

import math
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from cai_core.backends import SamplingParams, load_backend
from cai_core.cli import main
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.train import launch_command, prepare_train_job
from cai_core.train.sft import SFTConfig


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


def test_background_run_finishes_and_accelerate_builds_its_command(
    tiny_model_path, workspace, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = sft_data(tmp_path)
    argv = ["train", "sft", "--model", tiny_model_path, "--dataset", str(data), "--max-steps", "2", "--background"]
    assert cli(workspace, *argv) == 0
    [job] = list_job_folders(workspace.runs_dir)
    deadline = time.monotonic() + 60
    while job.progress().status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.progress().status == "done", job.log_tail()

    accelerate = tmp_path / "accelerate.yaml"
    accelerate.write_text("compute_environment: LOCAL_MACHINE\nnum_processes: 2\n")
    config = SFTConfig(model=tiny_model_path, dataset=str(data), accelerate_config=str(accelerate))
    other = prepare_train_job(config, workspace)
    command = launch_command(JobFolder(other.path), workspace)
    assert command[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(accelerate)]
    assert command[-3:] == ["train", "resume", other.run_id]


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
