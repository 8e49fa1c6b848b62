"""Issue 24 item 1: each principle's agreement with people decides how much its AI labels count in training.

The judge here has known reliability: under "honest" it answers as people did, under "coin" at random, under
"contrary" the other way round; "new" has too few human labels to judge. The gate must find the bad principles, and
the preferences it lets through must agree with people more than the ungated ones."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from cai_core.config import ConfigError
from cai_core.exports import ExportFilter, preference_rows
from cai_core.label_gate import GateRule, gate
from cai_core.records import HumanLabel
from cai_core.store import Store

from .test_agreement import ai_label, load, make_pairs

RUN = "label-known"


@pytest.fixture
def known_judge(workspace):
    rng = random.Random(7)
    pairs = make_pairs(120)
    people = {p.pair_id: rng.choice("ab") for p in pairs}
    humans = [HumanLabel(pair_id, "ann", choice, False) for pair_id, choice in people.items()]

    def label(pair_id: str, principle: str, agrees: bool):
        p = rng.uniform(0.75, 0.95)  # confident either way
        says_a = (people[pair_id] == "a") == agrees
        p1 = p if says_a else 1 - p
        return ai_label(RUN, pair_id, p1, 1 - p1, principle=principle)

    ai = []
    for n, pair in enumerate(pairs):
        ai.append(label(pair.pair_id, "honest", agrees=rng.random() < 0.9))
        ai.append(label(pair.pair_id, "coin", agrees=rng.random() < 0.5))
        ai.append(label(pair.pair_id, "contrary", agrees=rng.random() < 0.1))
        if n < 60:
            ai.append(label(pair.pair_id, "fair", agrees=rng.random() < 0.72))
    # "new" labels pairs nobody labelled: no human label to judge it by
    extra = make_pairs(130)[120:]
    ai += [ai_label(RUN, p.pair_id, 0.8, 0.2, principle="new") for p in extra]
    load(workspace, pairs + extra, humans, ai)
    return people


def test_the_gate_finds_the_principles_that_disagree_with_people(workspace, known_judge):
    with Store.open(workspace) as store:
        decided = gate(store, RUN).table.set_index("principle_id")
    assert decided.loc["honest", "decision"] == "keep" and decided.loc["honest", "weight"] == 1.0
    assert decided.loc["coin", "decision"] == "drop" and "not shown above chance" in decided.loc["coin", "reason"]
    assert decided.loc["contrary", "decision"] == "drop" and "other way" in decided.loc["contrary", "reason"]
    fair = decided.loc["fair"]
    assert fair.decision == "down-weight" and 0 < fair.weight < 1 and fair.weight == round(2 * fair.agreement - 1, 3)
    # what must not happen: a principle nobody can judge kept without saying so
    assert decided.loc["new", "decision"] == "unjudged" and "0 human label(s)" in decided.loc["new", "reason"]


def test_gated_preferences_agree_with_people_more_than_ungated_ones(workspace, known_judge):
    def agreement(rows) -> float:
        chose_a = [chosen[0]["content"].startswith("first") for chosen in rows.chosen]
        judged = [(a, known_judge[pair_id] == "a") for a, pair_id in zip(chose_a, rows.pair_id, strict=True)]
        return sum(a == b for a, b in judged) / len(judged)

    with Store.open(workspace) as store:
        ungated = preference_rows(store, ExportFilter(run_id=RUN))
        gated = preference_rows(store, ExportFilter(run_id=RUN, gate=GateRule()))
        strict = preference_rows(store, ExportFilter(run_id=RUN, gate=GateRule(unjudged="drop")))
    people_labelled = ungated[ungated.pair_id.isin(known_judge)]
    assert agreement(gated[gated.pair_id.isin(known_judge)]) > agreement(people_labelled) + 0.15
    # the unjudged principle's pairs stay by default and leave when the rule drops what it cannot judge
    assert set(gated.pair_id) - set(known_judge) and not set(strict.pair_id) - set(known_judge)


def test_a_bad_rule_names_its_field():
    with pytest.raises(ConfigError, match="keep_agreement: is 0.3: it must be at least 0.5"):
        GateRule(keep_agreement=0.3)
    with pytest.raises(ConfigError, match="unjudged"):
        GateRule(unjudged="maybe")


def test_the_cli_prints_the_decisions_saves_the_rule_and_exports_through_it(workspace, known_judge, tmp_path, capsys):
    from cai_core.cli import main as cai
    from cai_core.exports import load_export
    from cai_core.label_gate import load_rule

    data = ["--data-dir", str(workspace.root)]
    assert cai([*data, "gate", "--run-id", RUN]) == 0
    printed = capsys.readouterr().out
    assert f"label gate for {RUN}: 1 keep, 1 down-weight, 2 drop, 1 unjudged" in printed
    assert cai([*data, "gate", "--run-id", RUN, "--unjudged", "drop", "--save"]) == 0
    assert load_rule(workspace).unjudged == "drop" and "1 unjudged" in capsys.readouterr().out
    out, everything = tmp_path / "gated.jsonl", tmp_path / "all.jsonl"
    assert cai([*data, "export", "--kind", "preferences", "--run-id", RUN, "--gate", "--out", str(out)]) == 0
    assert cai([*data, "export", "--kind", "preferences", "--run-id", RUN, "--out", str(everything)]) == 0
    gated = set(load_export(str(out))["pair_id"])
    # the saved rule drops the unjudged principle: its pairs, which nobody labelled, leave the gated export
    assert gated and gated <= set(known_judge) and set(load_export(str(everything))["pair_id"]) - set(known_judge)
    # what must not happen: a rule no run could use saved
    assert cai([*data, "gate", "--keep-agreement", "2", "--save"]) == 2
    assert load_rule(workspace).keep_agreement == 0.7


def test_a_reward_model_and_dpo_run_read_the_gated_labels_and_keep_the_decisions(
    workspace, known_judge, tiny_model_path
):
    from cai_core import jobs
    from cai_core.label_gate import recorded_decisions
    from cai_core.train.dpo import DPOConfig
    from cai_core.train.reward import RewardConfig

    def snapshot(config) -> tuple[set, list[str]]:
        job = jobs.prepare(f"train-{config.kind}", config, workspace)
        train = pd.read_json(job.path / "data-train.jsonl", lines=True)
        recorded = recorded_decisions(job.path)
        return {turns[0]["content"] for turns in train.chosen}, list(recorded.get("decision", []))

    common = {"model": tiny_model_path, "labels": RUN}
    gated, decisions = snapshot(DPOConfig(**common))
    ungated, none = snapshot(DPOConfig(**common, gate=False))
    assert sorted(decisions) == ["down-weight", "drop", "drop", "keep", "unjudged"] and none == []
    # the chosen answers differ where the dropped principles had outvoted the honest one
    assert gated != ungated
    _, rm_decisions = snapshot(RewardConfig(**common, eval_fraction=0.0))
    assert rm_decisions == decisions
