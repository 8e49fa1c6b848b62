"""Degenerate SL-CAI steps are flagged, and healthy ones are not."""

from __future__ import annotations

from cai_core.step_flags import FLAGS, step_flags
from cai_core.textdiff import share_little

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
