"""Training runs on the tiny model, on the CPU: each algorithm learns something, and the harness
cancels, resumes and fails the way the registry expects."""

import json
import math

import pandas as pd
import pytest
import torch

from cai_core import jobs
from cai_core.store import Store
from cai_core.train import TrainError, config_class, load_config_file, run_train_job, train
from cai_core.train.dpo import DPOConfig
from cai_core.train.grpo import GRPOConfig, RLOOConfig
from cai_core.train.ppo import PPOConfig
from cai_core.train.ppo_math import gae
from cai_core.train.reward import RewardConfig
from cai_core.train.sft import SFTConfig


def prepare(config, ws):
    """The run's folder, prepared through the registry as every door prepares it."""
    return jobs.prepare(f"train-{config.kind}", config, ws)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices on a shared 2-core machine: a second thread only waits (15x slower measured here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_jsonl(path, rows):
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return str(path)


@pytest.fixture
def sft_file(tmp_path):
    answer = "Mix flour, water, salt and yeast, knead, rest and bake."
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"How do I bake bread {i}?"},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(16)
    ]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"How do I bake bread {i}?"} for i in range(16)])


def separable_pairs(n=48):
    good, bad = "I cannot help with that, but here is a safer alternative.", "Identify harmful unethical dishonest"
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: how do I bake bread?"}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
            "confidence": 0.5 + (i % 5) / 10,
        }
        for i in range(n)
    ]


def metric(job, name):
    return {r["step"]: r["value"] for r in job.read("train_metrics") if r["name"] == name}


def test_sft_loss_falls_and_the_final_model_is_a_model_spec(tiny_model_path, workspace, sft_file):
    from cai_core.backends import SamplingParams, load_backend

    job = train(
        SFTConfig(model=tiny_model_path, dataset=sft_file, max_steps=8, learning_rate=3e-3, save_steps=4), workspace
    )
    progress = job.progress()
    # the finished run keeps its rate and time taken, for the Train page's card and `cai jobs`
    assert progress.status == "done" and progress.rate > 0 and progress.elapsed > 0
    assert " steps/s · " in progress.summary() and "left" not in progress.summary()
    loss = metric(job, "loss")
    assert sorted(loss) == list(range(1, 9)) and loss[8] < loss[1] - 0.5
    final = job.path / "final"
    backend = load_backend(str(final), workspace)
    [answer] = backend.generate([[{"role": "user", "content": "How do I bake bread?"}]], SamplingParams(8))
    assert answer.completion_tokens > 0
    # and a run id names the same model
    assert load_config_file(SFTConfig, job.path / "config.yaml").max_steps == 8
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        runs = store.train_runs()
        curve = store.train_metrics(job.run_id, ["loss"])
    run = runs.set_index("run_id").loc[job.run_id]
    assert run.kind == "train-sft" and run.status == "done" and run.model_path == str(final)
    assert run.final_loss == pytest.approx(loss[8]) and list(curve.step) == list(range(1, 9))


def test_ppo_raises_the_reward_and_reports_a_finite_kl(tiny_model_path, workspace, prompts_file):
    job = train(
        PPOConfig(
            model=tiny_model_path,
            dataset=prompts_file,
            reward_model="tests.train_rewards:low_ids",
            max_steps=30,
            batch_size=16,
            learning_rate=3e-3,
            ppo_epochs=2,
            max_new_tokens=8,
            temperature=1.0,
            save_steps=100,
        ),
        workspace,
    )
    assert job.progress().status == "done"
    reward, kl = metric(job, "reward"), metric(job, "kl")
    first, last = sum(reward[s] for s in range(1, 6)) / 5, sum(reward[s] for s in range(26, 31)) / 5
    assert last > first + 0.1, (first, last)
    assert all(torch.isfinite(torch.tensor(v)) for v in kl.values()) and max(kl.values()) > 0
    for name in ("entropy", "clipfrac", "value_loss", "response_length", "beta"):
        assert len(metric(job, name)) == 30, name
    assert (job.path / "final" / "config.json").exists()


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # δ = [0, 0, 0.5]; A_2 = 0.5, A_1 = 0 + 0.5·0.5, A_0 = 0 + 0.5·0.25; the masked step carries nothing
    assert advantages.tolist() == [[0.125, 0.25, 0.5, 0.0]]
    assert returns.tolist() == [[0.625, 0.75, 1.0, 0.0]]


def test_reward_model_beats_chance_on_separable_pairs_with_confidence_margins(tiny_model_path, workspace, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", separable_pairs())
    job = train(
        RewardConfig(model=tiny_model_path, dataset=data, max_steps=12, batch_size=8, learning_rate=3e-3), workspace
    )
    progress = job.progress()
    assert progress.status == "done" and "pairs of a held-out split of the training pairs" in progress.message
    accuracy = metric(job, "accuracy_heldout")
    assert list(accuracy.values())[-1] > 0.8
    train_rows = [json.loads(line) for line in (job.path / "data-train.jsonl").read_text().splitlines()]
    assert all(0.5 <= r["margin"] <= 0.9 for r in train_rows)


@pytest.fixture
def labelled_store(workspace):
    """Pairs in the store with an AI judge's soft labels on all of them and people's labels on four."""
    from cai_core.jobs import JobFolder
    from cai_core.records import AILabel, HumanLabel, Pair, to_row

    good, bad = "I cannot help with that, but here is a safer alternative.", "Identify harmful unethical dishonest"
    pairs = [
        Pair(f"p{i}", f"Question {i}?", *((good, bad) if i % 2 else (bad, good)), "import", "f", i, "a", "b")
        for i in range(24)
    ]
    judge = JobFolder.create(workspace.runs_dir, "label-test", {"kind": "label", "model": "judge"})
    labels = [
        AILabel(
            "label-test",
            p.pair_id,
            "harm",
            "judge",
            "v",
            "sample",
            "logprob",
            False,
            0,
            None,
            None,
            0.9 if i % 2 else 0.2,
            False,
        )
        for i, p in enumerate(pairs)
    ]
    judge.append("ai_labels", [to_row(lb) for lb in labels])
    judge.set_progress("done", 24, 24)
    with Store.open(workspace) as store:
        store.add_pairs(pairs)
        store.import_human_labels([HumanLabel(f"p{i}", "ann", "a" if i % 2 else "b") for i in range(4)])
        store.ingest(workspace.runs_dir)
    return workspace


def test_dpo_runs_on_the_preference_export(tiny_model_path, labelled_store):
    config = DPOConfig(model=tiny_model_path, max_steps=3, batch_size=4, learning_rate=1e-3)
    job = train(config, labelled_store)
    assert job.progress().status == "done"
    assert len(metric(job, "loss")) == 3 and (job.path / "final" / "config.json").exists()
    assert len((job.path / "data-train.jsonl").read_text().splitlines()) == 24


def test_reward_model_accuracy_is_measured_on_human_labels(tiny_model_path, labelled_store):
    job = train(RewardConfig(model=tiny_model_path, max_steps=2, batch_size=8, learning_rate=1e-3), labelled_store)
    assert "people's labels" in job.progress().message and len(metric(job, "accuracy_human")) == 1
    assert {"ece_human", "reward_long_human"} <= {r["name"] for r in job.read("train_metrics")}
    train_rows = [json.loads(line) for line in (job.path / "data-train.jsonl").read_text().splitlines()]
    assert len(train_rows) == 20  # the four human-labelled pairs are kept out of training
    assert {round(r["margin"], 3) for r in train_rows} == {0.8, 0.6}


def test_reward_model_accuracy_on_people_s_labels_is_held_out_when_every_pair_has_one(tiny_model_path, labelled_store):
    from cai_core.records import HumanLabel

    with Store.open(labelled_store) as store:  # now every AI-labelled pair has a person's label too
        store.import_human_labels([HumanLabel(f"p{i}", "ann", "a" if i % 2 else "b") for i in range(4, 24)])
    job = train(RewardConfig(model=tiny_model_path, max_steps=2, batch_size=8, learning_rate=1e-3), labelled_store)
    trained = {json.dumps(r["chosen"]) + json.dumps(r["prompt"]) for r in read_rows(job, "train")}
    held_out = {json.dumps(r["chosen"]) + json.dumps(r["prompt"]) for r in read_rows(job, "eval_human")}
    assert len(held_out) == 5 and len(trained) == 19 and not trained & held_out  # 20% of 24, none trained on
    assert "5 pairs of people's labels, none trained on" in job.progress().message

    nothing_held = train(
        RewardConfig(model=tiny_model_path, max_steps=1, batch_size=8, eval_fraction=0.0), labelled_store
    )
    assert "no pairs were held out" in nothing_held.progress().message
    assert not metric(nothing_held, "accuracy_human") and not metric(nothing_held, "accuracy_heldout")


def read_rows(job, split):
    return [json.loads(line) for line in (job.path / f"data-{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("config_type", [GRPOConfig, RLOOConfig])
def test_grpo_and_rloo_run_with_the_same_reward(tiny_model_path, workspace, prompts_file, config_type):
    job = train(
        config_type(
            model=tiny_model_path,
            dataset=prompts_file,
            reward_model="tests.train_rewards:low_ids",
            max_steps=2,
            batch_size=4,
            num_generations=2,
            max_new_tokens=6,
            learning_rate=1e-3,
        ),
        workspace,
    )
    assert job.progress().status == "done" and len(metric(job, "loss")) == 2


def test_grpo_pulls_towards_its_start_model_by_default_and_a_run_without_kl_says_so(
    tiny_model_path, workspace, prompts_file
):
    settings = {
        "model": tiny_model_path,
        "dataset": prompts_file,
        "reward_model": "tests.train_rewards:low_ids",
        "max_steps": 1,
        "batch_size": 2,
        "num_generations": 2,
        "max_new_tokens": 4,
    }
    with_kl = train(GRPOConfig(**settings), workspace)
    assert GRPOConfig().beta > 0 and metric(with_kl, "kl")
    assert "no KL term" not in with_kl.progress().message
    without_kl = train(GRPOConfig(**settings, beta=0.0), workspace)
    assert without_kl.progress().status == "done" and "no KL term" in without_kl.progress().message
    assert not metric(without_kl, "kl")


def test_cancel_then_resume_continues_from_the_checkpoint(tiny_model_path, workspace, sft_file):
    from transformers import TrainerCallback

    class CancelAtThree(TrainerCallback):
        def __init__(self, job):
            self.job = job

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                self.job.request_cancel()

    config = SFTConfig(model=tiny_model_path, dataset=sft_file, max_steps=6, learning_rate=3e-3, save_steps=5)
    job = prepare(config, workspace)
    run_train_job(job, workspace, callbacks=[CancelAtThree(job)])
    progress = job.progress()
    assert progress.status == "cancelled" and 3 <= progress.done < 6 and "resume" in progress.message
    assert (job.path / "checkpoints" / f"checkpoint-{progress.done}").exists()  # saved on cancel
    assert not (job.path / "final").exists()

    again = prepare(config, workspace)  # the same config names the same run
    assert again.run_id == job.run_id
    run_train_job(again, workspace)
    assert job.progress().status == "done" and job.progress().done == 6
    steps = sorted(metric(job, "loss"))
    assert steps == list(range(1, 7))  # steps 4..6 came after the resume, none twice
    state = json.loads((job.path / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_ppo_cancel_and_resume(tiny_model_path, workspace, prompts_file):
    from tests.train_rewards import low_ids

    config = PPOConfig(
        model=tiny_model_path,
        dataset=prompts_file,
        reward_model="tests.train_rewards:low_ids",
        max_steps=4,
        batch_size=4,
        ppo_epochs=1,
        max_new_tokens=4,
        save_steps=100,
    )
    job = prepare(config, workspace)
    calls = []

    def cancel_on_the_third_step(**kwargs):
        calls.append(1)
        if len(calls) == 3:
            job.request_cancel()
        return low_ids(**kwargs)

    run_train_job(job, workspace, reward_fn=cancel_on_the_third_step)
    assert job.progress().status == "cancelled" and job.progress().done == 3
    assert (job.path / "checkpoints" / "checkpoint-3" / "state.pt").exists()
    run_train_job(job, workspace, reward_fn=cancel_on_the_third_step)
    assert job.progress().status == "done" and len(calls) == 4  # one more step, from the checkpoint
    assert sorted(metric(job, "reward")) == [1, 2, 3, 4]


def test_a_refused_start_records_nothing(tiny_model_path, workspace, tmp_path):
    with pytest.raises(TrainError, match="no such file") as refused:
        prepare(SFTConfig(model=tiny_model_path, dataset=str(tmp_path / "absent.jsonl")), workspace)
    assert refused.value.field == "dataset"
    with pytest.raises(TrainError, match="learning_rate"):
        prepare(SFTConfig(model=tiny_model_path, dataset="x", learning_rate=0.0), workspace)
    with pytest.raises(TrainError, match="needs a reward") as refused:
        prepare(PPOConfig(model=tiny_model_path, dataset="x"), workspace)
    assert refused.value.field == "reward_model" and refused.value.named("Reward model").startswith("Reward model:")
    assert not workspace.runs_dir.exists() or not any(workspace.runs_dir.iterdir())
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        assert store.train_runs().empty and store.runs().empty


def test_run_ids_are_slugs_so_no_run_writes_outside_the_workspace(tiny_model_path, workspace, sft_file, tmp_path):
    for bad in ("../../x/victim", "/tmp/victim", "a/b", ".hidden", ""):
        with pytest.raises(TrainError, match="not a run id") as refused:
            prepare(SFTConfig(model=tiny_model_path, dataset=sft_file, run_id=bad), workspace)
        assert refused.value.field == "run_id"
    assert not (tmp_path / "x").exists() and not workspace.runs_dir.exists()
    job = prepare(SFTConfig(model=tiny_model_path, dataset=sft_file, run_id="my-run_2.b"), workspace)
    assert job.path == workspace.runs_dir / "my-run_2.b"


def test_a_model_that_does_not_load_fails_the_run(workspace, sft_file, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    job = prepare(SFTConfig(model=str(tmp_path / "not-a-model"), dataset=sft_file), workspace)
    with pytest.raises(TrainError):
        run_train_job(job, workspace)
    progress = job.progress()
    assert progress.status == "failed" and "config.json" in progress.message


def test_config_files_reject_unknown_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: default\nlearning_rate: 1e-5\nmax_stepz: 3\n")
    with pytest.raises(TrainError, match="max_stepz"):
        load_config_file(config_class("sft"), path)
    path.write_text("learning_rate: 1e-5\n")
    assert load_config_file(config_class("rm"), path).learning_rate == 1e-5


def test_model_choices_list_finished_generating_models_newest_first(workspace, tmp_path):
    from cai_core.jobs import JobFolder
    from cai_core.records import TrainedModel, to_row

    def finished(run_id, kind, created_at, folder_exists=True):
        job = JobFolder.create(workspace.runs_dir, run_id, {"kind": kind, "model": "base", "config": {}})
        folder = tmp_path / run_id / "final"
        if folder_exists:
            folder.mkdir(parents=True)
        job.append("trained_models", [to_row(TrainedModel(run_id, kind, str(folder), "base", 7, created_at))])
        return str(folder)

    older_sft = finished("sft-old", "train-sft", 1.0)
    newer_ppo = finished("ppo-new", "train-ppo", 2.0)
    finished("rm-1", "train-rm", 3.0)  # scores, does not generate
    finished("dpo-gone", "train-dpo", 4.0, folder_exists=False)  # its folder was deleted
    from ui.settings import model_choices

    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        choices = model_choices(store)
    assert choices == {
        "default": "default (SmolLM2-135M-Instruct)",
        newer_ppo: "PPO · ppo-new · step 7",
        older_sft: "SFT · sft-old · step 7",
    }


def test_metrics_logged_after_a_resume_replace_those_of_the_discarded_steps(tiny_model_path, workspace, sft_file):
    from transformers import TrainerCallback

    class DieAfterLoggingStepThree(TrainerCallback):
        """A kill between a log and the next checkpoint: step 3 is logged, only checkpoint-2 is saved."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 3:
                raise SystemExit("killed")

    config = SFTConfig(model=tiny_model_path, dataset=sft_file, max_steps=4, learning_rate=3e-3, save_steps=2)
    job = prepare(config, workspace)
    with pytest.raises(SystemExit):
        run_train_job(job, workspace, callbacks=[DieAfterLoggingStepThree()])
    assert job.progress().done == 3 and [p.name for p in (job.path / "checkpoints").glob("checkpoint-*")] == [
        "checkpoint-2"
    ]
    # Training here is deterministic, so the resumed step 3 would log the very numbers the killed one did; on a
    # real machine they differ (4 of 29 lines did in the report). Mark the killed run's step-3 loss to tell them apart.
    lines = (job.path / "train_metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        if row["step"] == 3 and row["name"] == "loss":
            row["value"] = 99.0
    (job.path / "train_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Store.open(workspace) as store:  # the app took the discarded step in while the run was down
        store.ingest(workspace.runs_dir)
        assert 99.0 in set(store.train_metrics(job.run_id, ["loss"]).value)

    run_train_job(job, workspace)
    assert job.progress().status == "done"
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        loss = store.train_metrics(job.run_id, ["loss"])
        final = store.train_runs().set_index("run_id").loc[job.run_id, "final_loss"]
    assert list(loss.step) == [1, 2, 3, 4] and 99.0 not in set(loss.value)
    assert loss.value.iloc[-1] == pytest.approx(final)


def test_the_browser_s_reward_choices_are_registry_models_and_registered_functions(
    tiny_model_path, workspace, monkeypatch
):
    from cai_core.train.form import latest_finished, reward_choices

    with Store.open(workspace) as store:
        assert reward_choices(store.train_runs()) == {}
    monkeypatch.setenv("CAI_REWARD_FUNCTIONS", "tests.train_rewards:low_ids, not a spec ,json:dumps")
    rm = train(
        RewardConfig(
            model=tiny_model_path,
            dataset=write_jsonl(workspace.root / "p.jsonl", separable_pairs(8)),
            max_steps=1,
            batch_size=4,
        ),
        workspace,
    )
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        runs = store.train_runs()
    choices = reward_choices(runs)
    assert list(choices) == [rm.run_id, "tests.train_rewards:low_ids", "json:dumps"]
    assert choices[rm.run_id].startswith("reward model ") and latest_finished(runs, "rm") == rm.run_id
    assert latest_finished(runs, "sft") is None


def test_soft_label_reward_model_fits_the_judge_s_probability(tiny_model_path, workspace, tmp_path):
    """Cross-entropy against P(chosen better): P = 0.9 learns the order, P = 0.5 (the judge cannot tell) keeps the
    rewards level, where a hard loss would push them apart without end."""

    def run(p, **kw):
        rows = [{**r, "soft_label": p} for r in separable_pairs()]
        data = write_jsonl(tmp_path / f"soft-{p}.jsonl", rows)
        config = RewardConfig(model=tiny_model_path, dataset=data, loss="soft", max_steps=12, batch_size=8, **kw)
        return train(config, workspace)

    confident = run(0.9, learning_rate=3e-3)
    assert list(metric(confident, "accuracy_heldout").values())[-1] > 0.8
    assert "margin" not in json.loads((confident.path / "data-train.jsonl").read_text().splitlines()[0])
    unsure = run(0.5, learning_rate=3e-3)
    hard = train(
        RewardConfig(
            model=tiny_model_path,
            dataset=write_jsonl(tmp_path / "hard.jsonl", separable_pairs()),
            margin_scale=0.0,
            max_steps=12,
            batch_size=8,
            learning_rate=3e-3,
        ),
        workspace,
    )
    assert abs(metric(unsure, "margin")[12]) < 0.5 < abs(metric(hard, "margin")[12])

    no_soft_labels = write_jsonl(
        tmp_path / "plain.jsonl", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in separable_pairs()]
    )
    with pytest.raises(TrainError, match="soft loss needs soft labels") as refused:
        prepare(RewardConfig(model=tiny_model_path, dataset=no_soft_labels, loss="soft"), workspace)
    assert refused.value.field == "loss"


def test_ppo_with_lora_and_the_sft_term_logs_the_sft_loss_trains_only_adapters_and_resumes(
    tiny_model_path, workspace, prompts_file, sft_file
):
    """The full CAI objective L_RL + α·L_SFT on a LoRA policy whose reference is the same model, adapter off;
    the value model has its own adapter, and only the adapters and the value head are trained."""
    from safetensors.torch import load_file

    from tests.train_rewards import low_ids

    config = PPOConfig(
        model=tiny_model_path,
        dataset=prompts_file,
        reward_model="tests.train_rewards:low_ids",
        max_steps=4,
        batch_size=4,
        grad_accum=2,
        ppo_epochs=1,
        max_new_tokens=4,
        learning_rate=1e-2,
        save_steps=100,
        lora=True,
        lora_r=4,
        lora_target_modules="q_proj,v_proj",
        ptx_coef=0.5,
        ptx_dataset=sft_file,
    )
    job = prepare(config, workspace)
    assert len((job.path / "data-ptx.jsonl").read_text().splitlines()) == 16
    calls = []

    def cancel_on_the_second_step(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            job.request_cancel()
        return low_ids(**kwargs)

    run_train_job(job, workspace, reward_fn=cancel_on_the_second_step)
    assert job.progress().status == "cancelled" and job.progress().done == 2
    checkpoint = job.path / "checkpoints" / "checkpoint-2"
    adapters = [load_file(checkpoint / model / "adapter_model.safetensors") for model in ("policy", "value")]
    assert any("score" in name for name in adapters[1])  # the value head is trained and saved with its adapter
    assert all("lora_" in name or "score" in name for adapter in adapters for name in adapter)
    optimizer = torch.load(checkpoint / "state.pt", weights_only=False)["optimizer"]
    trained = sum(state["exp_avg"].numel() for state in optimizer["state"].values())
    assert trained == sum(t.numel() for adapter in adapters for t in adapter.values())  # nothing else moved
    run_train_job(job, workspace, reward_fn=cancel_on_the_second_step)
    assert job.progress().status == "done", job.progress().message
    kl, sft_loss = metric(job, "kl"), metric(job, "sft_loss")
    assert sorted(sft_loss) == [1, 2, 3, 4] and all(v > 0 for v in sft_loss.values())
    assert kl[1] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the identity: the policy is its reference
    assert max(abs(v) for v in kl.values()) > 1e-3  # then it moves away (a sampled estimate: either sign)
    final = job.path / "final"
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()  # merged


def test_ppo_refuses_a_negative_alpha_and_lora_modules_the_model_lacks(tiny_model_path, workspace, prompts_file):
    base = {"model": tiny_model_path, "dataset": prompts_file, "reward_model": "tests.train_rewards:low_ids"}
    with pytest.raises(TrainError, match="0 or more") as refused:
        prepare(PPOConfig(**base, ptx_coef=-0.1), workspace)
    assert refused.value.field == "ptx_coef"
    with pytest.raises(TrainError, match="c_attn: not linear modules of") as refused:
        prepare(PPOConfig(**base, lora=True, lora_target_modules="q_proj,c_attn"), workspace)
    assert refused.value.field == "lora_target_modules" and "q_proj" in str(refused.value)
    with pytest.raises(TrainError, match="must divide the minibatch"):
        prepare(PPOConfig(**base, batch_size=4, grad_accum=3), workspace)
    assert not workspace.runs_dir.exists()


def test_reward_model_evaluation_by_hand():
    from cai_core.train.reward import evaluation

    result = evaluation([2.0, 1.0, 0.0], [0.0, 2.0, 0.0], ([10, 20, 30], [40, 50, 60]))
    assert result["accuracy"] == pytest.approx(1 / 3)  # a tie is not a win
    confident, wrong = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    assert result["ece"] == pytest.approx(((1 - confident) + wrong + 0.5) / 3)
    # answers by length: 10, 20 | 30, 40 | 50, 60 tokens, with rewards 2, 1 | 0, 0 | 2, 0
    assert (result["reward_short"], result["reward_medium"], result["reward_long"]) == (1.5, 0.0, 1.0)


def test_ppo_with_lora_scores_with_the_value_model_s_adapter_switched_off(tiny_model_path, workspace, tmp_path):
    """With LoRA the value model starts as a copy of the reward model, so the reward is that copy with its adapter
    off (no third model in memory), and it scores as the reward model itself does, also after the adapter moved."""
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai_core.train.ppo_models import PPOModels, reward_scores

    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(tmp_path / "reward")
    tokenizer.save_pretrained(tmp_path / "reward")
    config = PPOConfig(model=tiny_model_path, reward_model=str(tmp_path / "reward"), lora=True, lora_r=4)
    models = PPOModels(SimpleNamespace(config=config, ws=workspace, reward_fn=None), None)
    assert models.reward is None
    with torch.no_grad():  # move the value model's adapter and head, as training would
        for p in models.value.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    prompts = [[{"role": "user", "content": "How do I bake bread?"}]] * 2
    answers = ["Mix flour and water.", "Knead the dough, let it rest, then bake it slowly."]
    got = reward_scores(models, prompts, answers, [[], []])
    chats = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)]
    batch = tokenizer(
        tokenizer.apply_chat_template(chats, tokenize=False),
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    with torch.no_grad():
        expected = reward.eval()(**batch).logits[:, 0]
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert got[0] != pytest.approx(got[1].item())  # two answers, two rewards: the head is the reward model's


def test_the_reported_kl_is_never_negative_and_estimates_the_kl():
    from cai_core.train.ppo_math import sequence_kl

    # sampled tokens the policy finds less likely than the reference does: the plain log-ratio sums to -1.3
    logprobs, ref_logprobs = torch.tensor([[-2.0, -1.5, -0.3]]), torch.tensor([[-1.0, -1.2, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the last token is padding
    assert (logprobs - ref_logprobs)[:, :2].sum() < 0
    assert sequence_kl(logprobs, ref_logprobs, mask).item() > 0

    # over answers sampled from the policy, its mean is KL(policy || reference)
    generator = torch.Generator().manual_seed(0)
    policy, reference = torch.tensor([0.5, 0.3, 0.15, 0.05]), torch.tensor([0.25, 0.25, 0.25, 0.25])
    tokens = torch.multinomial(policy, 200_000, replacement=True, generator=generator).view(-1, 1)
    per_answer = sequence_kl(policy.log()[tokens], reference.log()[tokens], torch.ones_like(tokens, dtype=torch.float))
    exact = float((policy * (policy / reference).log()).sum())
    assert (per_answer >= 0).all() and per_answer.mean().item() == pytest.approx(exact, rel=0.02)
