from pathlib import Path

import pytest

from cai_core.constitution import (
    ConstitutionError,
    diff_constitutions,
    list_constitutions,
    load_constitution,
    parse_constitution,
    save_constitution,
)
from cai_core.workspace import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "constitutions"

VALID = """\
name: Tiny
description: two principles
principles:
  - id: harm
    name: Harm
    critique_request: Say how your last answer could cause harm.
    revision_request: Rewrite it without the harm.
    preference_question: Which response is less harmful?
    tags: [harmless]
  - id: honest
    name: Honesty
    critique_request: Say what in your last answer is untrue.
    revision_request: Rewrite it truthfully.
    preference_question: Which response is more honest?
"""


def test_shipped_constitutions_are_valid_and_sized_as_promised():
    loaded = {p.stem: load_constitution(p) for p in list_constitutions(SHIPPED)}
    assert set(loaded) == {"hhh", "red_team", "customer_service"}
    assert len(loaded["hhh"].principles) >= 12
    assert len(loaded["customer_service"].principles) == 5
    assert all(c.few_shot_examples for c in loaded.values())


def test_version_is_content_not_formatting():
    a = parse_constitution(VALID)
    b = parse_constitution(VALID.replace("tags: [harmless]", "tags:\n      - harmless") + "\n\n# a comment\n")
    changed = parse_constitution(VALID.replace("less harmful", "more harmless"))
    assert a.version == b.version
    assert a.version != changed.version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nprinciples: [\n  - bad", ["malformed YAML", "line"]),
        (
            VALID.replace("    tags: [harmless]", "    tagz: [harmless]"),
            ["principle 1 ('harm')", "'tagz'", "unknown field", "line 9"],
        ),
        (
            VALID.replace("    revision_request: Rewrite it truthfully.\n", ""),
            ["principle 2 ('honest')", "'revision_request'", "missing"],
        ),
        (VALID.replace("id: honest", "id: harm"), ["duplicate principle id 'harm'"]),
        ("name: Empty\nprinciples: []\n", ["'principles'", "at least 1"]),
        ("", ["empty"]),
        (VALID.replace("id: harm", "id: Harm Principle"), ["principle 1", "'id'", "pattern"]),
        (
            VALID.replace("tags: [harmless]", "enabled: false").replace(
                "preference_question: Which response is more honest?",
                "preference_question: Which response is more honest?\n    enabled: false",
            ),
            ["every principle is disabled"],
        ),
    ],
    ids=[
        "malformed",
        "unknown-field",
        "missing-field",
        "duplicate-id",
        "no-principles",
        "empty-file",
        "bad-slug",
        "all-disabled",
    ],
)
def test_bad_constitutions_name_file_principle_field_and_line(text, expected):
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(text, "bad.yaml")
    message = str(err.value)
    assert message.startswith("bad.yaml")
    for fragment in expected:
        assert fragment in message


def test_save_is_atomic_and_refuses_invalid_content(tmp_path):
    path = tmp_path / "c.yaml"
    saved = save_constitution(VALID, path)
    before = path.read_bytes()
    with pytest.raises(ConstitutionError):
        save_constitution(VALID.replace("name: Tiny", "name: Tiny\nsurprise: 1"), path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    assert load_constitution(path).version == saved.version


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    save_constitution(VALID, path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cai_core.constitution.os.replace", full_disk)  # the one failure a real disk won't stage
    with pytest.raises(OSError):
        save_constitution(VALID.replace("Tiny", "Bigger"), path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConstitutionError, match="no such constitution file"):
        load_constitution(tmp_path / "nope.yaml")


def test_diff_shows_the_changed_line():
    a = parse_constitution(VALID)
    b = parse_constitution(VALID.replace("less harmful", "least harmful"))
    diff = diff_constitutions(a, b)
    assert "-  preference_question: Which response is less harmful?" in diff
    assert "+  preference_question: Which response is least harmful?" in diff
    assert diff_constitutions(a, a) == ""


def test_round_trip_through_yaml(tmp_path):
    original = load_constitution(SHIPPED / "hhh.yaml")
    copy = save_constitution(original, Path(tmp_path) / "copy.yaml")
    assert load_constitution(tmp_path / "copy.yaml") == original == copy
