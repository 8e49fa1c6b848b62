"""The training page under AppTest: empty, a tiny SFT run launched on the seeded SL-CAI traces and followed to
its curves, a run that could not start and one that failed while running, each with its reason shown."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cai_core.cli import main as cai
from cai_core.jobs import JobFolder, list_job_folders
from cai_core.store import Store, TraceFilter
from cai_core.train import train
from cai_core.train.reward import RewardConfig
from cai_core.train.sft import SFTConfig
from cai_core.workspace import PROJECT_ROOT
from ui.settings import OTHER_MODEL

from .browser.seed import copy_constitutions, model_in_workspace

TRAIN = "pages/4_Train.py"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The training runs this page launches inherit it: tiny matrices on a shared 2-core machine, where a
    second thread only waits."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def open_train(model: str | None = None) -> AppTest:
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    if model:
        at.selectbox(key="model_choice").set_value(OTHER_MODEL).run()
        at.text_input(key="model_spec").set_value(model).run()
    at.switch_page(TRAIN).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements).replace("\\", "")


def table(at: AppTest):
    [frame] = [d.value for d in at.dataframe if "run" in d.value.columns]  # the registry
    return frame


def test_renders_with_no_runs_and_the_model_follows_the_sidebar(tmp_path, monkeypatch):
    copy_constitutions(tmp_path / "constitutions")
    monkeypatch.setenv("CAI_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CAI_CONSTITUTIONS_DIR", str(tmp_path / "constitutions"))
    monkeypatch.delenv("CAI_DB", raising=False)
    at = open_train("some/model")
    assert "No training runs yet." in texts(at.info)
    assert at.text_input(key="train_sft_model").value == "some/model"
    assert at.number_input(key="train_sft_max_steps").value == 50
    assert at.text_input(key="train_sft_learning_rate").value == "2e-05"
    assert not at.error and not at.get("plotly_chart")


@pytest.mark.processes
def test_a_tiny_sft_run_launched_here_lands_in_the_registry_with_its_curves(ws, tiny_model_path):
    tiny_model_path = model_in_workspace(tiny_model_path, ws)  # the browser names paths inside the workspace only
    at = open_train(tiny_model_path)
    at.number_input(key="train_sft_max_steps").set_value(3)
    at.number_input(key="train_sft_batch_size").set_value(2)
    at.text_input(key="train_sft_learning_rate").set_value("1e-3")
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, texts(at.error)
    [job] = [j for j in list_job_folders(ws.runs_dir) if j.spec["kind"] == "train-sft"]
    assert f"Started {job.run_id}" in texts(at.success)
    assert job.spec["config"]["max_steps"] == 3 and job.spec["config"]["learning_rate"] == 1e-3
    assert job.spec["model"] == tiny_model_path and (job.path / "data-train.jsonl").exists()
    frame = table(at)
    assert list(frame["run"]) == [job.run_id] and list(frame["algorithm"]) == ["sft"]

    # starting it again while its process starts must not run it twice
    at.button(key="train_start").click().run()
    assert "already running" in texts(at.info)

    deadline = time.monotonic() + 120
    while job.progress().status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.progress().status == "done", job.log_tail()
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    frame = table(at)
    assert frame["status"][0] == "done" and frame["model folder or reason"][0] == str(job.path / "final")
    assert frame["loss (last step)"].notna().all()
    assert at.get("plotly_chart")
    assert str(job.path / "final") in texts(at.code)
    at.button(key=f"train_use-{job.run_id}").click().run()
    assert at.selectbox(key="model_choice").value == str(job.path / "final")
    assert f"Every page now uses the model in {job.path / 'final'}" in texts(at.success)


def test_a_run_that_cannot_start_names_the_form_field_and_records_nothing(ws, tmp_path):
    at = open_train()
    at.text_input(key="train_sft_dataset").set_value(str(ws.root / "absent.jsonl"))
    at.button(key="train_start").click().run()
    assert not at.exception
    assert "Not started: Dataset: " in texts(at.error) and "absent.jsonl: no such file or folder" in texts(at.error)
    # a file that exists, outside the workspace: the browser may not name it (the CLI may)
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"prompt": "p", "completion": "c"}\n', encoding="utf-8")
    for field, typed in (("dataset", str(outside)), ("helpful_data", "../../../etc/hostname"), ("model", "/etc")):
        at.text_input(key=f"train_sft_{field}").set_value(typed)
        at.button(key="train_start").click().run()
        assert "outside the workspace" in texts(at.error), field
        at.text_input(key=f"train_sft_{field}").set_value({"dataset": "store", "model": "default"}.get(field, ""))
    at.text_input(key="train_sft_dataset").set_value("store")
    at.text_input(key="train_sft_run_id").set_value("../../x/victim")
    at.button(key="train_start").click().run()
    assert "Not started: Run id: '../../x/victim' is not a run id" in texts(at.error)
    at.button_group(key="train_kind").set_value("ppo").run()
    at.button(key="train_start").click().run()
    assert "Not started: Reward model: PPO needs a reward" in texts(at.error)
    assert "--" not in texts(at.error)  # no CLI flags on a form
    assert not [j for j in list_job_folders(ws.runs_dir) if j.spec["kind"].startswith("train-")]
    assert not (tmp_path / "x").exists()
    with Store.open(ws) as store:
        assert store.train_runs().empty


@pytest.mark.processes
def test_the_training_chain_offers_its_previous_stages(ws, tiny_model_path, tmp_path, monkeypatch):
    """PPO picks its reward from a list (the registry's reward models, the operator's functions), starts from the
    latest SFT model, and a reward model is never offered as every page's model."""
    at = open_train()
    at.button_group(key="train_kind").set_value("ppo").run()
    assert "No reward model yet: train one on the RM tab first." in texts(at.info)
    assert at.selectbox(key="train_ppo_reward_model").options == []
    assert at.text_input(key="train_ppo_model").value == "default"
    labels = {w.key: w.label for w in [*at.text_input, *at.number_input, *at.checkbox] if w.key}
    assert labels["train_ppo_kl_target"] == "KL target" and labels["train_ppo_lam"] == "GAE λ"
    assert labels["train_ppo_vf_coef"] == "Value loss weight" and labels["train_ppo_kl_coef"] == "KL β"

    sft = train(SFTConfig(model=tiny_model_path, max_steps=1, batch_size=2), ws)
    pairs = tmp_path / "pairs.jsonl"
    good, bad = [{"role": "assistant", "content": "Kind and safe."}], [{"role": "assistant", "content": "Rude."}]
    rows = [{"prompt": [{"role": "user", "content": f"Q{i}?"}], "chosen": good, "rejected": bad} for i in range(8)]
    pd.DataFrame(rows).to_json(pairs, orient="records", lines=True)
    rm = train(RewardConfig(model=tiny_model_path, dataset=str(pairs), max_steps=1, batch_size=4), ws)
    monkeypatch.setenv("CAI_REWARD_FUNCTIONS", "tests.train_rewards:low_ids")
    at = open_train()
    at.button_group(key="train_kind").set_value("ppo").run()
    reward = at.selectbox(key="train_ppo_reward_model")
    assert reward.options == [f"reward model {rm.run_id} · step 1", "tests.train_rewards:low_ids (registered function)"]
    assert reward.value == rm.run_id
    assert at.text_input(key="train_ppo_model").value == sft.run_id
    at.button_group(key="train_kind").set_value("dpo").run()
    assert "people's labels" in at.selectbox(key="train_dpo_labels").options

    frame = table(at)
    assert "RM accuracy: held-out split of its pairs" in frame.columns and "accuracy" not in frame.columns
    at.selectbox(key="train_run").set_value(rm.run_id).run()
    assert not [b for b in at.button if b.key == f"train_use-{rm.run_id}"]
    evaluations = [d.value for d in at.dataframe if "calibration error (ECE)" in d.value.columns]
    assert evaluations and list(evaluations[0]["held-out pairs"]) == ["held-out split of its pairs"]
    at.selectbox(key="train_run").set_value(sft.run_id).run()
    assert [b for b in at.button if b.key == f"train_use-{sft.run_id}"]


def test_a_run_that_failed_while_running_shows_its_reason_as_text(ws, monkeypatch):
    launched = []
    # the launch is recorded, not run; its process is this one (the runner records the pid it started)
    monkeypatch.setattr(
        "cai_core.job_folder.subprocess.Popen",
        lambda argv, **kw: launched.append(argv) or SimpleNamespace(pid=os.getpid()),
    )
    job = JobFolder.create(ws.runs_dir, "sft-oom", {"kind": "train-sft", "model": "m", "config": {"max_steps": 9}})
    (job.path / "data-train.jsonl").write_text("{}\n")
    reason = "OutOfMemoryError: CUDA out of memory. Tried to allocate **2.00 GiB** <b>x</b>"
    job.set_progress("failed", 4, 9, reason)
    at = open_train()
    assert reason in [c.value for c in at.code]  # literally, as text
    assert "This run failed" in texts(at.error)
    at.button(key="resume-sft-oom").click().run()
    [argv] = launched
    assert argv[-2:] == ["resume", "sft-oom"] and argv[-3] != "train"  # `cai resume`: the registry's launch
    assert "Resumed sft-oom" in texts(at.success)
    assert not at.exception


def test_every_algorithm_has_its_config_form(ws):
    at = open_train()
    for kind in ("rm", "ppo", "dpo", "grpo", "rloo"):
        at.button_group(key="train_kind").set_value(kind).run()
        assert not at.exception, at.exception
        assert at.number_input(key=f"train_{kind}_max_steps").value >= 1
        if kind in ("ppo", "grpo", "rloo"):
            assert at.selectbox(key=f"train_{kind}_reward_model") is not None  # a list, never free text
            assert at.selectbox(key=f"train_{kind}_rollout_engine").value == "auto"
        if kind == "grpo":  # GRPO, too, keeps a KL term to its start model unless told not to
            assert float(at.text_input(key="train_grpo_beta").value) > 0
    assert at.text_input(key="train_rloo_beta").value == "0.05"


def test_a_finished_model_is_a_sidebar_choice_and_the_model_generate_launches_with(ws, tiny_model_path, monkeypatch):
    sft = train(SFTConfig(model=tiny_model_path, max_steps=2, batch_size=2, learning_rate=1e-3), ws)
    final = str(sft.path / "final")
    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))

    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    choice = at.selectbox(key="model_choice")
    assert choice.options == ["default (SmolLM2-135M-Instruct)", f"SFT · {sft.run_id} · step 2", OTHER_MODEL]
    choice.set_value(final).run()
    at.switch_page("pages/3_Generate.py").run()
    assert at.selectbox(key="model_choice").value == final  # the pick holds on every page
    at.selectbox(key="gen_constitution").set_value("hhh.yaml")
    at.number_input(key="gen_rounds").set_value(1)
    at.number_input(key="gen_limit").set_value(1)
    at.number_input(key="gen_tokens").set_value(4)
    at.button(key="gen_start").click().run()
    assert not at.exception and not at.error, texts(at.error)
    [argv] = launched
    generation = JobFolder(ws.runs_dir / argv[-1])
    assert generation.spec["model"] == final

    assert cai(argv) == 0  # the launched command line, run here: the trained model answers
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        traces = store.trace_page(TraceFilter(run_id=generation.run_id))
    assert list(traces["model"]) == [final]


def test_a_tracked_run_links_to_its_tracker_and_an_untracked_one_does_not(ws):
    from cai_core.train.context import RunContext

    job = JobFolder.create(
        ws.runs_dir, "sft-tracked", {"kind": "train-sft", "model": "m", "config": {"tracker": "tensorboard"}}
    )
    RunContext(job, SFTConfig(), ws).log_metrics(1, {"loss": 1.0})
    job.set_progress("running", 1, 9)
    at = open_train()
    [link] = [b for b in at.get("link_button") if b.proto.label == "Open in tensorboard"]
    assert link.proto.url == "http://localhost:6006/"
    assert any("tensorboard --logdir" in c.value for c in at.code)
    assert not at.exception
