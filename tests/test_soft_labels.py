"""Issue 24 items 2 and 3: a label run made through a calibration stores raw and calibrated P(a better), exports and
training say which they read, and DPO takes a per-pair soft target (or confidence weight) beside its hard loss."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from cai_core import cli, jobs
from cai_core.backends.hf import HFBackend
from cai_core.constitution import load_constitution
from cai_core.exports import ExportFilter, preference_rows
from cai_core.feedback import LabelConfig
from cai_core.jobs import JobFolder
from cai_core.judge_calibration import JudgeCalibration, PlattScaling
from cai_core.records import AILabel, CalibrationPrior, Pair, StoredCalibration, to_row
from cai_core.store import Store
from cai_core.train import TrainError, train
from cai_core.train.dpo import DPOConfig, recorded_probability, soft_label_trainer
from cai_core.workspace import PROJECT_ROOT

from .app_pages import open_page

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices on a shared 2-core machine: a second thread only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return HFBackend(tiny_model_path, batch_size=8)


def pairs(n: int) -> list[Pair]:
    return [
        Pair(f"p{i:03d}", f"question {i}?", f"answer {i} " * (1 + i % 3), f"reply {i}", "import", "hand", i, "a", "b")
        for i in range(n)
    ]


def store_calibration(workspace, calibration_id: str, version: str, priors: dict, platt: PlattScaling) -> None:
    """A calibration as a calibration job spools it."""
    fitted = JobFolder.create(workspace.runs_dir, calibration_id, {"kind": "calibrate", "model": "tiny", "config": {}})
    fitted.append("calibration_priors", [to_row(CalibrationPrior(calibration_id, p, *v)) for p, v in priors.items()])
    fitted.append(
        "judge_calibrations",
        [to_row(StoredCalibration(calibration_id, "earlier-run", "tiny", version, platt.slope, platt.bias, "{}"))],
    )


def test_a_label_run_through_a_calibration_stores_both_p_and_exports_say_which_they_read(workspace, tiny, tmp_path):
    constitution = load_constitution(HHH)
    priors = {p.id: (0.7, 0.6) for p in constitution.enabled_principles[:2]}  # the others: no prior measured
    platt = PlattScaling(0.5, 0.3)
    store_calibration(workspace, "cal-hand", constitution.version, priors, platt)
    with Store.open(workspace) as store:
        store.add_pairs(pairs(12))
        store.ingest(workspace.runs_dir)
    job = jobs.run(
        "label", LabelConfig(constitution=HHH, model="tiny", calibration="cal-hand"), workspace, backend=tiny
    )
    assert job.progress().status == "done", job.progress().message

    labels = pd.DataFrame(job.read("ai_labels")).set_index("pair_id").sort_index()
    q1, q2 = JudgeCalibration(priors, platt, {}).apply(
        labels.p_order1.to_numpy(), labels.p_order2.to_numpy(), list(labels.principle_id)
    )
    assert labels.p_a_calibrated.to_numpy() == pytest.approx((q1 + 1 - q2) / 2, abs=1e-9)
    assert not np.allclose(labels.p_a_calibrated, labels.p_a, atol=1e-3)  # the calibration moved every label
    assert set(labels.calibration_id) == {"cal-hand"}

    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        calibrated = preference_rows(store, ExportFilter(run_id=job.run_id)).set_index("pair_id")
        raw = preference_rows(store, ExportFilter(run_id=job.run_id, raw_labels=True)).set_index("pair_id")
    assert set(calibrated.probability) == {"calibrated"} and set(calibrated.calibration) == {"cal-hand"}
    assert set(raw.probability) == {"raw"} and raw.calibration.isna().all()
    oriented = labels.p_a_calibrated.where(labels.p_a_calibrated > 0.5, 1 - labels.p_a_calibrated)
    assert calibrated.soft_label.to_numpy() == pytest.approx(oriented.loc[calibrated.index].to_numpy())

    out = tmp_path / "prefs.jsonl"
    data = ["--data-dir", str(workspace.root)]
    assert cli.main([*data, "export", "--kind", "preferences", "--run-id", job.run_id, "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["probability"], r["calibration"]) for r in written} == {("calibrated", "cal-hand")}
    assert (
        cli.main([*data, "export", "--kind", "preferences", "--run-id", job.run_id, "--raw-labels", "--out", str(out)])
        == 0
    )
    assert {json.loads(line)["probability"] for line in out.read_text().splitlines()} == {"raw"}


def test_a_label_run_without_a_calibration_stores_no_calibrated_p(workspace, tiny):
    with Store.open(workspace) as store:
        store.add_pairs(pairs(3))
    job = jobs.run("label", LabelConfig(constitution=HHH, model="tiny"), workspace, backend=tiny)
    assert all(row.get("p_a_calibrated") is None for row in job.read("ai_labels"))


def test_a_calibration_of_another_constitution_version_is_refused_naming_it(workspace, tiny):
    store_calibration(workspace, "cal-old", "another-version", {}, PlattScaling(1.0, 0.0))
    with Store.open(workspace) as store:
        store.add_pairs(pairs(3))
        store.ingest(workspace.runs_dir)
    with pytest.raises(ValueError, match="calibration 'cal-old' was fitted under constitution version another-version"):
        jobs.prepare("label", LabelConfig(constitution=HHH, model="tiny", calibration="cal-old"), workspace)
    with pytest.raises(ValueError, match="calibration 'cal-none': no such calibration"):
        jobs.prepare("label", LabelConfig(constitution=HHH, model="tiny", calibration="cal-none"), workspace)


# --- soft labels into DPO ---------------------------------------------------------------------------------------


def dpo_trainer(tiny_model_path, tmp_path, mode: str, soft_label: float):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLDPOConfig

    from cai_core.exports import load_export

    rows = pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": "How do I bake bread?"}]],
            "chosen": [[{"role": "assistant", "content": "Mix flour, water, salt and yeast."}]],
            "rejected": [[{"role": "assistant", "content": "I cannot help with that."}]],
            "soft_label": [soft_label],
        }
    )
    path = tmp_path / f"pairs-{mode}-{soft_label}.jsonl"
    rows.to_json(path, orient="records", lines=True)
    args = TRLDPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=1,
        beta=0.5,
        use_cpu=True,
        report_to="none",
        gradient_checkpointing=False,
    )
    trainer = soft_label_trainer(mode)(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=args,
        train_dataset=load_export(path),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy off its reference, so that the pair's margin is not zero
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return trainer


def loss_and_gradient(trainer, inputs, compute_loss):
    trainer.model.zero_grad()
    loss = compute_loss(trainer.model, dict(inputs))
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


def test_the_soft_dpo_loss_is_trl_s_hard_loss_at_p_1_and_pulls_less_at_p_0_6(tiny_model_path, tmp_path):
    from trl import DPOTrainer

    from cai_core.train.dpo import preference_margin

    results = {}
    for mode, p in (("target", 1.0), ("target", 0.6), ("target", 0.4), ("weight", 0.6)):
        trainer = dpo_trainer(tiny_model_path, tmp_path, mode, p)
        inputs = next(iter(trainer.get_train_dataloader()))
        hard_inputs = {k: v for k, v in inputs.items() if k != "soft_label"}
        # TRL's own loss on the same model, reference and pair
        hard = loss_and_gradient(trainer, hard_inputs, functools.partial(DPOTrainer.compute_loss, trainer))
        soft = loss_and_gradient(trainer, inputs, trainer.compute_loss)
        with torch.no_grad():
            margin = trainer.beta * preference_margin(trainer, trainer.model, hard_inputs).item()
        results[mode, p] = hard, soft, margin

    (hard_loss, hard_grad), (soft_loss, soft_grad), _ = results["target", 1.0]
    assert soft_loss == pytest.approx(hard_loss, rel=1e-5)
    assert torch.allclose(soft_grad, hard_grad, rtol=1e-4, atol=1e-7)

    # one pair: d loss / d margin is -(p - σ(m)) for the target, -(2p - 1)(1 - σ(m)) for the weight, against the
    # hard loss's -(1 - σ(m)); the gradient is that times the margin's own gradient
    for (mode, p), ((_, hard_grad), (_, soft_grad), m) in results.items():
        sigma = 1 / (1 + np.exp(-m))
        expected = (p - sigma) / (1 - sigma) if mode == "target" else 2 * p - 1
        assert abs(m) > 1e-3
        assert torch.allclose(soft_grad, expected * hard_grad, rtol=1e-3, atol=1e-7), (mode, p)
        if p != 1.0:
            assert abs(expected) < 0.9 and not torch.allclose(soft_grad, hard_grad, rtol=1e-2)


def test_dpo_with_soft_labels_trains_on_the_calibrated_p_and_records_it(tiny_model_path, workspace, capsys):
    good, bad = "I cannot help with that, but here is a safer alternative.", "Identify harmful unethical dishonest"
    found = [Pair(f"p{i}", f"Question {i}?", good, bad, "import", "f", i, "a", "b") for i in range(8)]
    store_calibration(workspace, "cal-x", "v", {}, PlattScaling(0.5, 0.0))
    judge = JobFolder.create(workspace.runs_dir, "label-test", {"kind": "label", "model": "judge"})
    raw = [0.9 if i % 2 else 0.2 for i in range(8)]
    rows = [
        AILabel("label-test", p.pair_id, "harm", "judge", "v", "sample", "logprob", False, 0, None, None, r, False)
        for p, r in zip(found, raw, strict=True)
    ]
    # the run labelled through cal-x: half its labels calibrated, as a run that knows its calibration stores them
    calibrated = [0.6 if i % 2 else 0.45 for i in range(8)]
    judge.append(
        "ai_labels",
        [to_row(r) | {"p_a_calibrated": c, "calibration_id": "cal-x"} for r, c in zip(rows, calibrated, strict=True)],
    )
    judge.set_progress("done", 8, 8)
    with Store.open(workspace) as store:
        store.add_pairs(found)
        store.ingest(workspace.runs_dir)

    config = DPOConfig(
        model=tiny_model_path, max_steps=2, batch_size=4, learning_rate=1e-3, soft_labels="target", gate=False
    )
    job = train(config, workspace)
    assert job.progress().status == "done", job.progress().message
    trained = [json.loads(line) for line in (job.path / "data-train.jsonl").read_text().splitlines()]
    assert sorted(r["soft_label"] for r in trained) == pytest.approx([0.55] * 4 + [0.6] * 4)
    record = recorded_probability(job.path)
    assert record[["labels", "probability", "calibration", "pairs"]].values.tolist() == [
        ["label-test", "calibrated", "cal-x", 8]
    ]

    command = ["--data-dir", str(workspace.root), "train", "dpo", "--model", tiny_model_path, "--max-steps", "1"]
    assert cli.main([*command, "--batch-size", "4", "--no-gate", "--raw-labels", "--run-id", "dpo-raw"]) == 0
    assert "preference labels read: label-test: raw P (8 pairs)" in capsys.readouterr().out
    hard = JobFolder(workspace.runs_dir / "dpo-raw")
    assert "soft_label" not in json.loads((hard.path / "data-train.jsonl").read_text().splitlines()[0])
    assert recorded_probability(hard.path).probability.tolist() == ["raw"]


def test_soft_labels_on_pairs_without_a_p_are_refused_naming_the_field(tiny_model_path, workspace, tmp_path):
    path = tmp_path / "hard.jsonl"
    pd.DataFrame({"prompt": ["q"], "chosen": ["good"], "rejected": ["bad"]}).to_json(path, orient="records", lines=True)
    with pytest.raises(TrainError, match="need a soft_label column") as error:
        DPOConfig(model=tiny_model_path, dataset=str(path), soft_labels="weight").build_data(workspace)
    assert error.value.field == "soft_labels"
    assert "train" in DPOConfig(model=tiny_model_path, dataset=str(path)).build_data(workspace)


def test_a_recipe_passes_its_calibration_to_its_label_runs_and_soft_labels_to_its_dpo_stage(workspace):
    from cai_core.recipe import Recipe, RecipeConfig, plan

    config = RecipeConfig(rl="dpo", label={"calibration": "cal-x"}, rl_config={"soft_labels": "target"})
    recipe = Recipe(config, workspace)
    built = {stage.step: recipe.build(stage) for stage in plan(config) if stage.step in ("label", "rl")}
    assert built["label"].calibration == "cal-x"
    assert built["rl"].soft_labels == "target" and built["rl"].labels == built["label"].run_id
    wrong = RecipeConfig(rl="dpo", rl_config={"soft_labels": "always"})
    [rl] = [stage for stage in plan(wrong) if stage.step == "rl"]
    with pytest.raises(ValueError, match="soft_labels"):
        Recipe(wrong, workspace).build(rl)


# --- the pages ------------------------------------------------------------------------------------------------


def test_the_agreement_page_starts_a_label_run_through_the_calibration_picked(ws, tiny_model_path, monkeypatch):
    from .browser.seed import model_in_workspace

    launched = []
    monkeypatch.setattr(JobFolder, "start", lambda job, command: launched.append(command[3:]))
    version = load_constitution(ws.constitutions_dir / "hhh.yaml").version
    store_calibration(ws, "cal-page", version, {}, PlattScaling(0.5, 0.0))
    with Store.open(ws) as store:
        store.add_pairs(pairs(3))
        store.ingest(ws.runs_dir)
    at = open_page("pages/6_Agreement.py")
    at.selectbox(key="label_constitution").set_value("hhh.yaml")
    at.text_input(key="label_model").set_value(model_in_workspace(tiny_model_path, ws))
    at.selectbox(key="label_calibration").set_value("cal-page")
    at.button(key="label_start").click().run()
    assert not at.exception and not at.error, at.error
    [argv] = launched
    job = JobFolder(ws.runs_dir / argv[3])
    assert job.spec["config"]["calibration"] == "cal-page"
    [copied] = job.read_input("input_calibration")
    assert (copied["calibration_id"], copied["slope"]) == ("cal-page", 0.5)


def test_the_train_page_offers_soft_labels_and_shows_which_p_a_run_read(ws, tiny_model_path):
    from .browser.seed import model_in_workspace

    model = model_in_workspace(tiny_model_path, ws)
    good, bad = "I cannot help with that, but here is a safer alternative.", "Identify harmful unethical dishonest"
    found = [Pair(f"q{i}", f"Question {i}?", good, bad, "import", "f", i, "a", "b") for i in range(4)]
    judge = JobFolder.create(ws.runs_dir, "label-page", {"kind": "label", "model": "judge"})
    judge.append(
        "ai_labels",
        [
            to_row(
                AILabel(
                    "label-page", p.pair_id, "harm", "judge", "v", "sample", "logprob", False, 0, None, None, 0.9, False
                )
            )
            | {"p_a_calibrated": 0.7, "calibration_id": "cal-y"}
            for p in found
        ],
    )
    judge.set_progress("done", 4, 4)
    with Store.open(ws) as store:
        store.add_pairs(found)
        store.ingest(ws.runs_dir)
    run = train(
        DPOConfig(model=model, labels="label-page", max_steps=1, batch_size=4, soft_labels="weight", gate=False), ws
    )
    assert run.progress().status == "done", run.progress().message

    at = open_page("pages/4_Train.py")
    at.button_group(key="train_kind").set_value("dpo").run()
    assert at.selectbox(key="train_dpo_soft_labels").options == ["off", "target", "weight"]
    assert at.checkbox(key="train_dpo_raw_labels").value is False
    at.selectbox(key="train_run").set_value(run.run_id).run()
    assert not at.exception, at.exception
    shown = "\n".join(str(c.value) for c in at.caption)
    assert "Preference labels read: label-page: calibrated by cal-y P (4 pairs)" in shown
