"""The reward-hacking monitor's signals and rules on hand-made answers."""

from __future__ import annotations

import math

import pytest

from cai_core.train.monitor import HackingMonitor, Rule


def test_rules_parse_and_bad_ones_are_refused():
    rule = Rule.parse("length_ratio>2.5:stop")
    assert (rule.signal, rule.above, rule.threshold, rule.action) == ("length_ratio", True, 2.5, "stop")
    assert rule.fires(3.0) and not rule.fires(2.0)
    with pytest.raises(ValueError, match="unknown signal"):
        Rule.parse("lenght>2:warn")
    with pytest.raises(ValueError, match="expected SIGNAL"):
        Rule.parse("length_ratio>>2")


def test_length_repetition_and_stock_phrases_are_read_against_the_first_step():
    monitor = HackingMonitor(rules=[Rule.parse("length_ratio>2:warn"), Rule.parse("distinct_ratio<0.5:stop")])
    first = monitor.observe(1, ["A short, plain answer about locks.", "Call a locksmith who can help."], [0.1], 0.0)
    assert first["monitor/length_ratio"] == pytest.approx(1.0) and not monitor.alerts
    looping = ["I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry."] * 2
    later = monitor.observe(2, looping, [0.9], 0.4)
    assert later["monitor/length_ratio"] > 2 and later["monitor/distinct_ratio"] < 0.5
    assert later["monitor/stock_share"] == 1.0 and later["monitor/kl"] == 0.4
    assert {a.rule.signal for a in monitor.fired(2)} == {"length_ratio", "distinct_ratio"}
    assert monitor.stopped_by().rule.signal == "distinct_ratio"
    assert later["monitor/alert/length_ratio"] == 1.0


def test_hacking_is_reward_rising_while_the_judged_win_rate_falls():
    # a judge that prefers answers no longer than the starting policy's, and a policy whose answers grow
    def judge(prompts, now, start):
        return [1 / (1 + math.exp((len(a) - len(b)) / 20)) for a, b in zip(now, start, strict=True)]

    words = {"n": 4}

    def generate(prompts):
        return ["word " * words["n"] for _ in prompts]

    monitor = HackingMonitor(judge=judge, held_out=["p1", "p2"], every=1, window=3)
    monitor.start(generate)
    first = monitor.observe(1, generate(["x"]), [0.1], 0.0, generate)
    assert first["monitor/win_rate"] == pytest.approx(0.5) and first["monitor/hacking"] == 0.0  # one point: no trend
    steady = monitor.observe(2, generate(["x"]), [0.1], 0.0, generate)
    assert steady["monitor/hacking"] == 0.0  # neither rose nor fell
    signals = []
    for step, reward in [(3, 0.3), (4, 0.6), (5, 0.9)]:
        words["n"] += 6
        signals.append(monitor.observe(step, generate(["x"]), [reward], 0.1, generate))
    assert [s["monitor/win_rate"] for s in signals] == sorted((s["monitor/win_rate"] for s in signals), reverse=True)
    assert signals[-1]["monitor/hacking"] == 1.0
    assert any(a.rule.signal == "hacking" for a in monitor.fired(5))


def test_the_monitor_stops_a_real_ppo_run_whose_reward_pays_for_length(tiny_model_path, workspace, tmp_path):
    import json

    from cai_core.jobs import JobFolder
    from cai_core.train import train
    from cai_core.train.ppo import PPOConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"tell me about the {w}"}) + "\n" for i, w in enumerate(WORDS)),
        encoding="utf-8",
    )
    job: JobFolder = train(
        PPOConfig(
            model=tiny_model_path,
            dataset=str(prompts),
            reward_model="tests.train_rewards:answer_length",
            max_steps=40,
            batch_size=16,  # the run stops well before: at the hacking signature
            learning_rate=3e-3,
            max_new_tokens=16,
            temperature=1.0,
            save_steps=100,
            monitor_every=2,
            monitor_prompts=4,
            monitor_judge="tests.train_rewards:prefers_shorter",
            monitor_rules="hacking>0.5:stop",
        ),
        workspace,
    )
    metrics = {}
    for row in job.read("train_metrics"):
        metrics.setdefault(row["name"], {})[row["step"]] = row["value"]
    progress = job.progress()
    assert progress.status == "cancelled", progress.message
    assert "stopped by the reward-hacking monitor" in progress.message and "hacking" in progress.message
    reward, win = metrics["reward"], metrics["monitor/win_rate"]
    judged = sorted(win)
    stop = max(metrics["monitor/alert/hacking"])
    assert win[judged[0]] == pytest.approx(0.5)  # the policy against itself at the start
    # at the stop, the judge (who prefers the shorter answer) finds the held-out answers much longer than at the
    # start, while the reward, which pays for length, rose over the judged points before it
    assert win[stop] < 0.25
    window = [reward[s] for s in judged if s <= stop][-3:]
    assert window[-1] > window[0]
    assert max(reward) == stop  # nothing trained after the stop


WORDS = ["sea", "moon", "forest", "river", "city", "music", "bread", "winter", "garden", "train", "clock", "book"]


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_the_monitor_warns_and_stops_a_real_trl_run(tiny_model_path, workspace, tmp_path, kind, capsys):
    """GRPO and RLOO (TRL's trainers) feed the same monitor through a callback: the judged win rate on held-out
    prompts is logged and warns, and a stop rule on the KL to the reference ends the run with a checkpoint."""
    import json

    from cai_core.train import config_class, train

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"tell me about the {w}"}) + "\n" for i, w in enumerate(WORDS)),
        encoding="utf-8",
    )
    job = train(
        config_class(kind)(
            model=tiny_model_path,
            dataset=str(prompts),
            reward_model="tests.train_rewards:answer_length",
            max_steps=8,
            batch_size=4,
            num_generations=2,
            max_new_tokens=8,
            learning_rate=3e-3,
            beta=0.05,
            save_steps=100,
            monitor_every=2,
            monitor_prompts=3,
            monitor_judge="tests.train_rewards:prefers_shorter",
            # the win rate is at most 1: this warning must come at the first judged step, and the run go on past it;
            # the policy leaves the reference as soon as it learns anything: the KL must cross 0.001 and stop it
            monitor_rules="win_rate<1.01:warn,kl>0.001:stop",
        ),
        workspace,
    )
    metrics = {}
    for row in job.read("train_metrics"):
        metrics.setdefault(row["name"], {})[row["step"]] = row["value"]
    progress = job.progress()
    assert progress.status == "cancelled", progress.message
    assert "stopped by the reward-hacking monitor" in progress.message and "kl" in progress.message
    assert 2 in metrics["monitor/win_rate"] and metrics["monitor/alert/win_rate"][2] == 1.0
    [stop] = metrics["monitor/alert/kl"]
    assert 2 <= stop < 8 and metrics["monitor/kl"][stop] > 0.001
    assert max(metrics["loss"]) == stop  # nothing trained after the stop
    assert (job.path / "checkpoints" / f"checkpoint-{stop}").exists()  # a rerun resumes from there
    # the held-out prompts were kept out of training
    trained = [json.loads(line)["prompt"][0]["content"] for line in (job.path / "data-train.jsonl").open()]
    assert len(trained) == len(WORDS) - 3 and "tell me about the book" not in trained
    # the CLI's list of runs says what the monitor saw, after the run's message has moved on
    from cai_core.cli import main as cai

    capsys.readouterr()
    assert cai(["--data-dir", str(workspace.root), "train", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"warning: reward-hacking monitor: kl crossed its threshold at step {stop}" in listed
    assert "win_rate crossed its threshold at step 2" in listed
