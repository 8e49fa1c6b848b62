"""Issue 24 item 6: the label gate on data where the truth is known (`benchmarks/bench_gate.py`, at a test's size).

A stand-in judge on the OpenAI wire answers some principles of the hhh constitution as the hh-rlhf crowdworkers
did, some by a coin and some the other way round; the real label job, store, gate and reward-model trainer run.
The gate must keep exactly the principles that answer as people did, and the gated reward model must train on
labels that agree with people where the ungated one trains on the judge's noise. Whether the gated reward model
then scores held-back pairs better is the benchmark's question: the tiny model here learns nothing from hh-rlhf
text (it is at chance either way), so the test checks only that both models were scored on the same pairs."""

from __future__ import annotations

import pytest

from benchmarks.bench_gate import HH_RLHF, known_truth

pytestmark = pytest.mark.skipif(not HH_RLHF.exists(), reason=f"{HH_RLHF} is absent (the shared hh-rlhf data)")


@pytest.mark.processes
def test_the_gate_drops_the_principles_that_do_not_answer_as_people_did(workspace, tiny_model_path):
    result = known_truth(
        workspace,
        tiny_model_path,
        people=2,
        coin=2,
        contrary=2,
        audit_pairs=30,
        train_pairs=32,
        held_back_pairs=16,
        max_length=512,
    )
    decisions = {row["principle_id"]: (row["behaviour"], row["decision"]) for row in result["gate"]}
    assert len(decisions) == 6
    for principle, (behaviour, decision) in decisions.items():
        assert decision == ("keep" if behaviour == "people" else "drop"), (principle, behaviour, decision)
    gated, ungated = result["reward_models"]["gated"], result["reward_models"]["ungated"]
    assert gated["trained_labels_agree_with_people"] == 1.0
    # what must not happen: the ungated model reading the judge's noise as well as people's choice
    assert ungated["trained_labels_agree_with_people"] < 0.8
    assert result["pairs"]["held_back"] == 16 and result["gated_minus_ungated_95"][0] <= result["gated_minus_ungated"]
