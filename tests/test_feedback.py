import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cai_core import jobs
from cai_core.backends import BackendError, Generation, load_backend
from cai_core.backends.hf import HFBackend
from cai_core.backends.openai_compat import OpenAICompatBackend
from cai_core.constitution import load_constitution
from cai_core.feedback import (
    COT_ANSWER_REQUEST,
    COT_INSTRUCTION,
    OPTIONS,
    Judge,
    LabelConfig,
    choose_principle,
    comparison_chat,
    few_shot_chat,
    parse_strict,
)
from cai_core.jobs import JobFolder
from cai_core.records import Pair
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

from .openai_server import serve

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")


def pair(i: int, a: str = "", b: str = "") -> Pair:
    return Pair(
        f"p{i}",
        f"How do I bake bread, question {i}?" + " Please be quick." * (i % 3),
        a or f"Mix flour, water, salt and yeast, knead, rest and bake. ({i})",
        b or "I cannot help with that." + " Really." * i,
        "import",
        "test",
        i,
        "a",
        "b",
    )


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return HFBackend(tiny_model_path, batch_size=3)  # the backend's own scorer then pads across batches


def direct_p_first(backend: HFBackend, chat) -> float:
    """P("A") among "A"/"B" from one unpadded forward pass, without any of the judge's code."""
    tokenizer, model = backend.tokenizer, backend.model
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    a, b = (tokenizer(o, add_special_tokens=False).input_ids[0] for o in OPTIONS)
    return math.exp(logprobs[a]) / (math.exp(logprobs[a]) + math.exp(logprobs[b]))


def test_the_soft_label_equals_a_direct_log_prob_computation_in_both_orders(tiny):
    c = load_constitution(HHH)
    principle = c.principle("avoid-harm")
    pairs = [pair(i) for i in range(7)]
    verdicts = Judge(tiny, c).label([(p, principle) for p in pairs])
    for p, v in zip(pairs, verdicts, strict=True):
        first = direct_p_first(tiny, comparison_chat(principle, p.prompt, p.response_a, p.response_b))
        second = direct_p_first(tiny, comparison_chat(principle, p.prompt, p.response_b, p.response_a))
        assert v.p_order1 == pytest.approx(first, abs=1e-5)
        assert v.p_order2 == pytest.approx(second, abs=1e-5)
        assert v.p_a == pytest.approx((first + 1 - second) / 2, abs=1e-5)
        assert v.method == "logprob" and not v.failed
    assert len({round(v.p_order1, 6) for v in verdicts}) > 1  # really different prompts, not one constant


class Scripted:
    """A judge that prefers the option whose text contains `good`, with a fixed lean towards (A)."""

    name = "scripted"

    def __init__(self, lean: float = 0.0, text: str | None = None, logprobs: bool = True):
        self.lean, self.text, self.logprobs = lean, text, logprobs
        self.calls = []

    def score_options(self, chats, options):
        self.calls.append(("score", len(chats)))
        if not self.logprobs:
            raise BackendError("http://x returned no log-probabilities")
        out = []
        for chat in chats:
            question = chat[0]["content"] if len(chat) == 1 else chat[-3]["content"]
            a_good = "(A) good" in question
            out.append([(1.0 if a_good else -1.0) + self.lean, 0.0])
        return out

    def generate(self, chats, params, on_done=None):
        self.calls.append(("generate", len(chats)))
        return [Generation(self.text if self.text is not None else "thinking", 1, 1, 0.0) for _ in chats]


def test_orders_are_mapped_back_to_the_pair_before_averaging():
    c = load_constitution(HHH)
    principle = c.principles[0]
    good_first, good_second = (
        Pair("x", "q", "good", "bad", "import", "t", 0, "a", "b"),
        Pair("y", "q", "bad", "good", "import", "t", 1, "a", "b"),
    )
    unbiased = Judge(Scripted(), c).label([(good_first, principle), (good_second, principle)])
    sigmoid = 1 / (1 + math.exp(-1.0))
    assert unbiased[0].p_order1 == pytest.approx(sigmoid) and unbiased[0].p_order2 == pytest.approx(1 - sigmoid)
    assert unbiased[0].p_a == pytest.approx(sigmoid) and unbiased[1].p_a == pytest.approx(1 - sigmoid)
    # a judge that only ever says "A" prefers neither response once both orders are averaged
    biased = Judge(Scripted(lean=50.0), c).label([(good_first, principle)])[0]
    assert biased.p_order1 == pytest.approx(1.0) and biased.p_order2 == pytest.approx(1.0)
    assert biased.p_a == pytest.approx(0.5)


def test_all_pairs_and_orders_go_in_one_scoring_call_per_batch():
    c = load_constitution(HHH)
    scripted = Scripted()
    Judge(scripted, c).label([(pair(i), c.principles[0]) for i in range(5)])
    assert scripted.calls == [("score", 10)]


def test_chain_of_thought_reasons_first_then_scores_and_clamps(tiny):
    c = load_constitution(HHH)
    principle = c.principle("honesty")
    pairs = [pair(i) for i in range(4)]
    judge = Judge(tiny, c, cot=True, cot_tokens=6, cot_band=(0.45, 0.55))
    verdicts = judge.label([(p, principle) for p in pairs])
    for p, v in zip(pairs, verdicts, strict=True):
        assert v.reasoning_1 is not None and v.reasoning_2 is not None
        thinking = judge.chats(p, principle, COT_INSTRUCTION)[0]
        scored = [*thinking, {"role": "assistant", "content": v.reasoning_1}]
        scored.append({"role": "user", "content": COT_ANSWER_REQUEST})
        assert v.p_order1 == pytest.approx(direct_p_first(tiny, scored), abs=1e-5)  # raw, not clamped
        assert 0.45 <= v.p_a <= 0.55
        assert v.p_a == pytest.approx(min(max((v.p_order1 + 1 - v.p_order2) / 2, 0.45), 0.55))
    scripted = Scripted()
    Judge(scripted, c, cot=True).label([(p, principle) for p in pairs])
    assert scripted.calls == [("generate", 8), ("score", 8)]


def test_few_shot_examples_alternate_the_better_side_and_are_bounded():
    c = load_constitution(HHH)
    chat = few_shot_chat(c, c.principles[0], 2)
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
    assert [chat[1]["content"], chat[3]["content"]] == ["A", "B"]
    assert f"(A) {c.few_shot_examples[0].revision}" in chat[0]["content"]
    assert f"(B) {c.few_shot_examples[1].revision}" in chat[2]["content"]
    with pytest.raises(ValueError, match="has only 2 worked example"):
        few_shot_chat(c, c.principles[0], 3)
    judge = Judge(Scripted(), c, few_shot=1)
    first, second = judge.chats(pair(0), c.principles[0], "Answer.")
    assert first[:2] == second[:2] == few_shot_chat(c, c.principles[0], 1) and len(first) == 3


@pytest.mark.parametrize(
    ("reply", "expected"), [("A", 1.0), (" B\n", 0.0), ("The answer is A", None), ("(A)", None), ("", None)]
)
def test_strict_replies_are_read_exactly_or_not_at_all(reply, expected):
    assert parse_strict(reply) == expected


def test_without_log_probabilities_the_judge_falls_back_to_strict_and_records_failures():
    c = load_constitution(HHH)
    items = [(pair(i), c.principles[0]) for i in range(2)]
    answered = Judge(Scripted(text="A", logprobs=False), c).label(items)
    assert [(v.method, v.p_order1, v.p_order2, v.p_a) for v in answered] == [("strict", 1.0, 1.0, 0.5)] * 2
    rambling = Judge(Scripted(text="I think A is better", logprobs=False), c).label(items)
    assert all(v.failed and v.p_a is None and v.p_order1 is None for v in rambling)
    with pytest.raises(BackendError):
        Judge(Scripted(logprobs=False), c, method="logprob").label(items)


def test_an_endpoint_without_logprobs_is_judged_strictly_over_http(tiny):
    c = load_constitution(HHH)
    with serve(tiny, logprobs=False) as server:
        backend = OpenAICompatBackend("tiny", [server.url])
        verdicts = Judge(backend, c).label([(pair(i), c.principles[0]) for i in range(3)])
    assert {v.method for v in verdicts} == {"strict"}
    # the tiny model rambles: every order unreadable, recorded as a failure instead of a guess
    for v in verdicts:
        assert v.failed == (v.p_order1 is None or v.p_order2 is None)


def config(model, **overrides):
    return LabelConfig(**{"constitution": HHH, "model": model, "batch_size": 4, **overrides})


def test_a_labelling_run_records_model_principles_version_and_raw_orders(tiny, workspace):
    c = load_constitution(HHH)
    pairs = [pair(i) for i in range(6)]
    job = jobs.run("label", config(tiny.name), workspace, pairs=pairs, backend=tiny)
    assert job.progress().status == "done" and job.progress().done == 6
    with Store.open(workspace) as store:
        store.add_pairs(pairs)
        store.ingest(workspace.runs_dir)
        rows = store.con.execute("SELECT * FROM ai_labels ORDER BY pair_id").df()
        run = store.runs("label").iloc[0]
    assert len(rows) == 6 and set(rows.judge_model) == {tiny.name} and set(rows.strategy) == {"sample"}
    assert set(rows.constitution_version) == {c.version} and run.constitution_version == c.version
    assert rows.principle_id.tolist() == [choose_principle(c, 0, p.pair_id).id for p in pairs]
    assert ((rows.p_a - (rows.p_order1 + 1 - rows.p_order2) / 2).abs() < 1e-12).all()
    assert not rows.cot.any() and not rows.failed.any() and (rows.method == "logprob").all()


def test_ensemble_labels_every_enabled_principle(tiny, workspace):
    c = load_constitution(HHH)
    job = jobs.run("label", config(tiny.name, strategy="ensemble"), workspace, pairs=[pair(0), pair(1)], backend=tiny)
    labels = job.read("ai_labels")
    assert len(labels) == 2 * len(c.enabled_principles)
    assert {(r["pair_id"], r["principle_id"]) for r in labels} == {
        (f"p{i}", p.id) for i in range(2) for p in c.enabled_principles
    }
    assert {r["strategy"] for r in labels} == {"ensemble"}


def test_pairs_come_from_the_store_and_a_rerun_resumes(tiny, workspace):
    with Store.open(workspace) as store:
        store.add_pairs([pair(i) for i in range(5)])
    first = jobs.run("label", config(tiny.name, limit=3), workspace, backend=tiny)
    again = jobs.run("label", config(tiny.name, limit=3), workspace, backend=tiny)
    assert first.run_id == again.run_id and len(again.read("ai_labels")) == 3
    other = jobs.run("label", config(tiny.name), workspace, backend=tiny)
    assert other.run_id != first.run_id and len(other.read("ai_labels")) == 5
    with pytest.raises(ValueError, match="no pairs to label"):
        jobs.run("label", config(tiny.name, source="sampled"), workspace, backend=tiny)


def test_cancel_stops_between_batches_and_rerunning_finishes(tiny, workspace):
    job = JobFolder(workspace.runs_dir / "cancel-me")  # the run makes it; the backend cancels through it
    calls = []

    class CancelAfterFirstBatch:
        name = tiny.name

        def score_options(self, chats, options):
            calls.append(len(chats))
            job.request_cancel()
            return tiny.score_options(chats, options)

    pairs = [pair(i) for i in range(40)]  # enough for batches of the full 4 (`jobs.progress_batch_size`)
    cfg = config(tiny.name, run_id="cancel-me")
    stopped = jobs.run("label", cfg, workspace, pairs=pairs, backend=CancelAfterFirstBatch())
    assert stopped.progress().status == "cancelled" and len(stopped.read("ai_labels")) == 4
    finished = jobs.run("label", cfg, workspace, pairs=pairs, backend=tiny)
    assert finished.progress().status == "done" and len(finished.read("ai_labels")) == 40


def test_a_run_smaller_than_one_batch_still_reports_labels_before_its_end(tiny, workspace):
    seen = []
    jobs.run(
        "label",
        config(tiny.name, batch_size=32),
        workspace,
        pairs=[pair(i) for i in range(20)],
        backend=tiny,
        on_progress=lambda done, total: seen.append(done),
    )
    assert seen[0] == 0 and seen[-1] == 20
    assert len([done for done in seen if 0 < done < 20]) >= 5  # the count moves as labels come, not at the end


def cai(*args, data):
    return subprocess.run(
        [sys.executable, "-m", "cai_core.cli", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_pairs_file(path, n):
    path.write_text(
        "".join(
            json.dumps({"prompt": f"question {i}?", "response_a": f"answer {i} " * (1 + i % 5), "response_b": "no"})
            + "\n"
            for i in range(n)
        )
    )


@pytest.mark.processes
def test_kill_minus_nine_then_rerun_duplicates_no_label(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    write_pairs_file(tmp_path / "pairs.jsonl", 12)
    assert cai("pairs", "import", str(tmp_path / "pairs.jsonl"), data=data).returncode == 0
    argv = [sys.executable, "-m", "cai_core.cli", "--data-dir", str(data), "label", "--constitution", HHH]
    argv += ["--model", tiny_model_path, "--strategy", "ensemble", "--batch-size", "4", "--run-id", "killed"]
    labels = data / "runs" / "killed" / "ai_labels.jsonl"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if labels.exists() and labels.read_text().count("\n") >= 12:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    job = JobFolder(data / "runs" / "killed")
    assert job.progress().status == "failed"
    before = {(r["pair_id"], r["principle_id"]) for r in job.read("ai_labels")}
    with open(labels, "a") as f:
        f.write('{"run_id": "killed", "pair_id": "p-torn')  # a write cut short by the kill
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    keys = [(r["pair_id"], r["principle_id"]) for r in job.read("ai_labels")]
    enabled = len(load_constitution(HHH).enabled_principles)
    assert len(keys) == len(set(keys)) == 12 * enabled and before <= set(keys)
    with Store.open(data / "cai.duckdb") as store:
        store.ingest(data / "runs")
        assert store.con.execute("SELECT count(*) FROM ai_labels").fetchall()[0][0] == 12 * enabled


@pytest.mark.processes
def test_label_in_the_background_then_agreement_from_the_cli(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    rows = [
        json.dumps({"pair_id": f"hand-{i}", "prompt": f"q{i}", "response_a": "yes", "response_b": "no"})
        for i in range(6)
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "labels.csv").write_text(
        "pair_id,label,annotator\n" + "".join(f"hand-{i},{'ab'[i % 2]},ann\n" for i in range(6))
    )
    assert cai("pairs", "import", str(tmp_path / "pairs.jsonl"), data=data).returncode == 0
    assert cai("import-labels", str(tmp_path / "labels.csv"), data=data).returncode == 0
    started = cai("label", "--constitution", HHH, "--model", tiny_model_path, "--background", data=data)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[1]
    job = JobFolder(data / "runs" / run_id)
    deadline = time.monotonic() + 120
    while job.progress().status not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.progress().status == "done", job.log_tail()
    table = cai("agreement", data=data)
    assert table.returncode == 0, table.stderr
    assert run_id in table.stdout and "agreement" in table.stdout and "labels_no_ties" in table.stdout
    principles = {row["principle_id"] for row in job.read("ai_labels")}
    picked = sorted(principles)[0]
    by_principle = cai("agreement", "--by", "principle", "--run-id", run_id, "--principle", picked, data=data)
    assert by_principle.returncode == 0, by_principle.stderr
    first_words = {line.split()[0] for line in by_principle.stdout.splitlines() if line.strip()}
    assert picked in first_words and not first_words & (principles - {picked})  # one principle's labels only
    none = cai("agreement", "--judge-model", "no-such-judge", data=data)
    assert none.returncode == 2 and "no AI labels match" in none.stderr and none.stderr.count("\n") == 1


def test_preference_export_trains_reward_and_dpo_models_for_two_steps(tiny, tiny_model_path, workspace, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from cai_core.exports import ExportFilter, export_rows, load_export, write_export

    pairs = [pair(i) for i in range(8)]
    job = jobs.run("label", config(tiny.name), workspace, pairs=pairs, backend=tiny)
    with Store.open(workspace) as store:
        store.add_pairs(pairs)
        store.ingest(workspace.runs_dir)
        rows = export_rows(store, "preferences")
        confident = export_rows(store, "preferences", ExportFilter(run_id=job.run_id, min_confidence=0.01))
    assert len(rows) == 8 and set(rows.labels) == {job.run_id}
    assert (rows.soft_label > 0.5).all() and ((rows.confidence - (2 * rows.soft_label - 1)).abs() < 1e-9).all()
    assert len(confident) == (rows.confidence >= 0.01).sum() < 8  # the tiny judge is rarely sure
    first = rows.iloc[0]
    assert first.prompt == [{"role": "user", "content": pairs[0].prompt}]
    assert {first.chosen[0]["content"], first.rejected[0]["content"]} == {pairs[0].response_a, pairs[0].response_b}
    data = load_export(write_export(rows, tmp_path / "prefs.jsonl", "jsonl"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    common = dict(max_steps=2, per_device_train_batch_size=2, report_to="none", bf16=False, save_strategy="no")
    reward = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1),
        args=RewardConfig(output_dir=str(tmp_path / "rm"), **common),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert reward.train().global_step == 2
    dpo = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert dpo.train().global_step == 2


def test_human_preferences_export_follows_the_majority(workspace):
    from cai_core.exports import ExportFilter, export_rows
    from cai_core.records import HumanLabel

    with Store.open(workspace) as store:
        store.add_pairs([pair(0), pair(1), pair(2)])
        store.import_human_labels(
            [HumanLabel("p0", "ann", "b"), HumanLabel("p0", "bo", "b"), HumanLabel("p0", "cy", "a")]
            + [HumanLabel("p1", "ann", "a"), HumanLabel("p2", "ann", "tie")]
        )
        rows = export_rows(store, "preferences", ExportFilter(run_id="human")).set_index("pair_id")
    assert list(rows.index) == ["p0", "p1"]  # a tie is no preference
    assert rows.loc["p0", "chosen"][0]["content"] == pair(0).response_b
    assert rows.loc["p0", "soft_label"] == pytest.approx(2 / 3) and rows.loc["p1", "confidence"] == 1.0


# What the real-model test checks is the dashboard on a real judge's labels of real pairs (each labelled in both
# orders, every figure in range, disagreements to list): 20 pairs of a 135M judge near chance agreement show that
# as well as the 100 it took before (about ten disagreements to list), in a fifth of the time. The vLLM engine's
# P(A) is held to transformers' in test_backend_vllm.py.
HH_RLHF_PAIRS = 20


@pytest.mark.slow
@pytest.mark.vllm  # where vLLM is installed: it labels on the engine the vLLM tests started
def test_real_default_model_on_the_first_hh_rlhf_pairs(default_model_path, workspace):
    from cai_core.agreement import dashboard
    from cai_core.pairs import read_hh_rlhf

    from .conftest import require_shared_data

    path = require_shared_data("hh-rlhf", "harmless-base-test-part1.jsonl.gz")
    found = read_hh_rlhf(path, limit=HH_RLHF_PAIRS)
    with Store.open(workspace) as store:
        assert store.add_pairs(found.pairs) == HH_RLHF_PAIRS
        assert store.import_human_labels(found.labels) == HH_RLHF_PAIRS
    # On vLLM where it is installed: the same model and labels (test_backend_vllm checks P(A) agrees within
    # 0.02), at a fraction of transformers' time, and the engine that test session already started.
    engine = "vllm" if importlib.util.find_spec("vllm") else "hf"
    backend = load_backend(f"{engine}:{default_model_path}", dtype="float32")
    began = time.perf_counter()
    job = jobs.run("label", config(default_model_path, batch_size=16), workspace, backend=backend)
    seconds = time.perf_counter() - began
    labels = job.read("ai_labels")
    assert len(labels) == HH_RLHF_PAIRS and all(0 < r["p_order1"] < 1 and 0 < r["p_order2"] < 1 for r in labels)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        board = dashboard(store)
    row = board.by_run.iloc[0]
    assert row.pairs == HH_RLHF_PAIRS and row.failed == 0 and row.labels_no_ties == HH_RLHF_PAIRS
    assert 0 <= row.agreement <= 1 and 0 <= row.position_consistency <= 1 and board.reliability.n == HH_RLHF_PAIRS
    assert board.confusion.to_numpy().sum() == HH_RLHF_PAIRS and len(board.disagreements) > 0
    print(
        f"\nhh-rlhf first {HH_RLHF_PAIRS}: agreement {row.agreement:.3f}, kappa {row.kappa:.3f}, position consistency "
        f"{row.position_consistency:.2f}, first-position rate {row.first_position_rate:.2f}, ECE {row.ece:.3f}; "
        f"labelled in {seconds:.0f} s on {engine}"
    )
