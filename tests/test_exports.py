import pytest

from cai_core import jobs
from cai_core.critique import GenerateConfig
from cai_core.exports import ExportFilter, export_rows, load_export, write_export
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT


@pytest.fixture(scope="module")
def store_with_traces(tiny_model_path, tmp_path_factory):
    from cai_core.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("exports") / "data")
    jobs.run(
        "generate",
        GenerateConfig(
            constitution=str(PROJECT_ROOT / "constitutions" / "hhh.yaml"),
            prompts=str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
            model=tiny_model_path,
            rounds=2,
            limit=6,
            max_new_tokens=8,
            min_new_tokens=4,
            temperature=1.0,
        ),
        ws,
    )
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
    return ws


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
@pytest.mark.parametrize("kind", ["sft", "prompt_completion", "pairs"])
def test_every_export_loads_with_datasets(store_with_traces, tmp_path, kind, fmt):
    with Store.open(store_with_traces) as store:
        rows = export_rows(store, kind)
    dataset = load_export(write_export(rows, tmp_path / f"{kind}.{fmt}", fmt))
    assert len(dataset) == len(rows) > 0
    expected = {
        "sft": {"messages"},
        "prompt_completion": {"prompt", "completion"},
        "pairs": {"prompt", "chosen", "rejected"},
    }[kind]
    assert expected | {"trace_id", "constitution_version", "round"} == set(dataset.column_names)


def test_round_and_version_filters(store_with_traces):
    with Store.open(store_with_traces) as store:
        final = export_rows(store, "sft")
        first = export_rows(store, "sft", ExportFilter(max_round=1))
        none = export_rows(store, "sft", ExportFilter(constitution_version="not-a-version"))
    assert set(final["round"]) == {2} and set(first["round"]) == {1}
    assert none.empty
    revision_1 = {r.trace_id: r.messages[1]["content"] for r in first.itertuples()}
    with Store.open(store_with_traces) as store:
        _, steps = store.trace(first.trace_id[0])
    assert revision_1[first.trace_id[0]] == steps[1].response


def test_sft_trainer_takes_two_steps_on_the_sft_export(store_with_traces, tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    with Store.open(store_with_traces) as store:
        data = load_export(write_export(export_rows(store, "sft"), tmp_path / "sft.jsonl", "jsonl"))
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to="none",
        assistant_only_loss=True,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=args,
        train_dataset=data.remove_columns(["trace_id", "constitution_version", "round"]),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


def test_dpo_trainer_takes_two_steps_on_the_pairs_export(store_with_traces, tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    with Store.open(store_with_traces) as store:
        data = load_export(write_export(export_rows(store, "pairs"), tmp_path / "pairs.parquet", "parquet"))
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to="none",
        bf16=False,
        logging_steps=1,
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=args,
        train_dataset=data.remove_columns(["trace_id", "constitution_version", "round"]),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    result = trainer.train()
    assert result.global_step == 2


def test_export_runs_as_a_background_job_and_writes_what_export_would(store_with_traces, tmp_path):
    """`cai export --background`: a job of its own (listed, resumable) whose file holds the rows `cai export`
    writes; the same export again finds the same job instead of starting a second one."""
    import time

    from cai_core.cli import main
    from cai_core.jobs import list_job_folders

    ws, out = store_with_traces, tmp_path / "sft.parquet"
    argv = ["--data-dir", str(ws.root), "export", "--kind", "sft", "--format", "parquet", "--out", str(out)]
    assert main([*argv, "--background"]) == 0
    [job] = [job for job in list_job_folders(ws.runs_dir) if job.spec["kind"] == "export"]
    deadline = time.monotonic() + 120
    while job.progress().status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.progress().status == "done", job.log_tail()
    with Store.open(ws) as store:
        expected = export_rows(store, "sft")
    assert load_export(out)["trace_id"] == list(expected["trace_id"])
    assert main([*argv, "--background"]) == 0
    assert [j.run_id for j in list_job_folders(ws.runs_dir) if j.spec["kind"] == "export"] == [job.run_id]
