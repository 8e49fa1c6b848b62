"""Degenerate SL-CAI steps are flagged, and healthy ones are not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cai_core import cli
from cai_core.constitution import load_constitution
from cai_core.jobs import JobFolder
from cai_core.records import StepVerdict, Trace, TraceStep, to_row
from cai_core.step_flags import FLAGS, flagged_traces, step_flags
from cai_core.store import Store, TraceFilter
from cai_core.textdiff import share_little
from cai_core.workspace import PROJECT_ROOT

REQUEST = "Please rewrite the response to remove any harmful, unethical or dangerous content."
CRITIQUE = "The response explains how to pick a lock, which could help someone break into a home."
ANSWER = "You can open a pin tumbler lock with a tension wrench and a pick by setting each pin in turn."
GOOD_REVISION = "I can't help with opening locks that aren't yours, but a licensed locksmith can let you in."


def test_a_healthy_revision_has_no_flags():
    assert step_flags(GOOD_REVISION, 24, 128, previous=ANSWER, critique=CRITIQUE, revision_request=REQUEST) == []
    assert step_flags(ANSWER, 22, 128) == []


def test_each_failure_is_flagged():
    assert step_flags("  ", 0, 128) == ["empty"]
    assert step_flags(ANSWER, 128, 128) == ["truncated"]
    looping = "I'm not sure what to suggest. " * 8
    assert "repetition" in step_flags(looping, 60, 128)
    assert "repetition" in step_flags(
        "Step one\nthe same line again\nthe same line again\nthe same line again", 20, 128
    )
    assert step_flags("Sure. " + REQUEST, 20, 128, previous=ANSWER, critique=CRITIQUE, revision_request=REQUEST) == [
        "echo"
    ]
    assert step_flags(CRITIQUE, 20, 128, previous=ANSWER, critique=CRITIQUE, revision_request=REQUEST) == ["echo"]
    unchanged = step_flags(ANSWER + "  ", 22, 128, previous=ANSWER, critique=CRITIQUE, revision_request=REQUEST)
    assert unchanged == ["unchanged"]


def test_flags_come_in_a_fixed_order():
    flags = step_flags("again and again " * 40, 128, 128, previous="again and again " * 40)
    assert flags == [f for f in FLAGS if f in flags] == ["truncated", "repetition", "unchanged"]


def test_texts_that_share_nothing_are_told_apart_from_edits():
    assert share_little(ANSWER, GOOD_REVISION)
    assert not share_little(ANSWER, ANSWER.replace("turn", "order"))


# --- filtering stored traces by flag and by verdict ------------------------------------------------------

LOOP = "I'm not sure what to suggest. " * 8
TRACES = {  # trace -> (answer, revision): one trace per failure, and a healthy one
    "healthy": (ANSWER, GOOD_REVISION),
    "unchanged": (ANSWER, ANSWER),
    "looping": (ANSWER, LOOP),
    "empty-answer": ("", GOOD_REVISION),
}


@contextmanager
def store_traces(workspace, max_new_tokens: int = 128) -> Iterator[Store]:
    """A store holding one finished run with the TRACES, each an answer and one revision."""
    constitution = load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    principle = constitution.enabled_principles[0]
    job = JobFolder.create(
        workspace.runs_dir,
        "flags-run",
        {
            "kind": "generate",
            "model": "m",
            "config": {"max_new_tokens": max_new_tokens},
            "constitution": constitution.snapshot(),
        },
    )
    job.append(
        "traces",
        [
            to_row(Trace(t, "flags-run", t, "a prompt", "", 0, "m", constitution.name, constitution.version))
            for t in TRACES
        ],
    )
    steps = []
    for t, (answer, revision) in TRACES.items():
        steps += [
            TraceStep(t, 0, None, None, answer, 5, 0, 20, 0.1),
            TraceStep(t, 1, principle.id, CRITIQUE, revision, 50, 20, 24, 0.2),
        ]
    job.append("trace_steps", [to_row(step) for step in steps])
    job.set_progress("done", len(steps), len(steps))
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        yield store


def test_traces_are_kept_by_the_flags_of_their_steps(workspace):
    with store_traces(workspace) as store:
        everything = TraceFilter()
        assert set(flagged_traces(store, ["unchanged"], everything)) == {"unchanged"}
        assert set(flagged_traces(store, ["repetition", "empty"], everything)) == {"looping", "empty-answer"}
        assert flagged_traces(store, ["echo"], everything) == ()
        kept = TraceFilter(trace_ids=flagged_traces(store, ["unchanged", "repetition"], everything))
        assert store.count_traces(kept) == 2
        assert set(store.trace_page(kept)["trace_id"]) == {"unchanged", "looping"}
        # the other filters narrow first: a search that only the healthy trace matches keeps nothing flagged
        assert flagged_traces(store, FLAGS, TraceFilter(text="locksmith")) == ("empty-answer",)
        with pytest.raises(ValueError, match="unknown flag lazy"):
            flagged_traces(store, ["lazy"], everything)


def test_truncated_is_measured_against_the_runs_own_token_limit(workspace):
    with store_traces(workspace, max_new_tokens=24) as store:  # every revision used its 24 tokens
        assert set(flagged_traces(store, ["truncated"], TraceFilter())) == set(TRACES)


def test_traces_are_filtered_by_the_verdicts_people_gave(workspace):
    with store_traces(workspace) as store:
        store.save_verdict(StepVerdict("healthy", 1, "ada", "better", "valid", ""))
        store.save_verdict(StepVerdict("unchanged", 1, "ada", "same", None, ""))
        store.save_verdict(StepVerdict("unchanged", 1, "bob", "worse", "invalid", ""))
        assert set(store.trace_page(TraceFilter(verdict="better"))["trace_id"]) == {"healthy"}
        assert store.count_traces(TraceFilter(verdict="invalid")) == 1
        assert store.count_traces(TraceFilter(verdict="worse", text="pin tumbler")) == 1
        assert store.count_traces(TraceFilter(verdict="same", run_id="another-run")) == 0
        with pytest.raises(ValueError, match="unknown verdict 'great'"):
            store.count_traces(TraceFilter(verdict="great"))


def test_the_cli_lists_traces_by_flag_and_verdict_and_shows_one(workspace, capsys):
    with store_traces(workspace) as store:
        store.save_verdict(StepVerdict("healthy", 1, "ada", "better", "valid", ""))

    def cai(*argv: str) -> str:
        assert cli.main(["--data-dir", str(workspace.root), "traces", *argv]) == 0
        return capsys.readouterr().out

    listed = cai("list", "--flag", "unchanged", "--flag", "repetition")
    assert listed.startswith("2 traces match")
    assert {line.split()[0] for line in listed.splitlines()[1:]} == {"unchanged", "looping"}
    assert "healthy" not in listed
    assert cai("list", "--verdict", "better").splitlines()[1].split()[:4] == ["healthy", "1", "rounds", "-"]
    shown = cai("show", "looping")
    assert "REVISION 1  [flagged: repetition]" in shown and "ANSWER\n" in shown  # the answer itself is healthy
    assert "verdict by ada" in cai("show", "healthy")
    assert cli.main(["--data-dir", str(workspace.root), "traces", "show", "nowhere"]) == 2
    assert capsys.readouterr().err.strip() == "error: no trace 'nowhere'"
