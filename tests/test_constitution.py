import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

import cai_core.constitution
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


# --- bad input: aliases, duplicate keys, size ---------------------------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join(['*' + chr(97 + n)] * 9)}]\n" for n in range(8)
)


def test_a_billion_laughs_is_refused_at_its_first_alias_without_expanding_it():
    # refused at line 3, the first alias met: nothing was expanded before the refusal
    with pytest.raises(ConstitutionError, match=r"bomb.yaml, line 3: YAML aliases \(\*a\) are not allowed"):
        parse_constitution("name: x\n" + BILLION_LAUGHS.replace("a: &a", "description: &a", 1), "bomb.yaml")
    with pytest.raises(ConstitutionError, match="aliases"):
        parse_constitution(VALID.replace("description: two principles", "description: &d two principles") + "x: *d\n")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (VALID.replace("description: two principles", "description: two principles\nname: Again"), 3, "name"),
        (VALID.replace("    tags: [harmless]", "    tags: [harmless]\n    name: Harm again"), 10, "name"),
    ],
    ids=["top-level", "in-a-principle"],
)
def test_duplicate_keys_are_refused_naming_both_lines(text, line, key):
    with pytest.raises(ConstitutionError, match=rf"c.yaml, line {line}: duplicate key '{key}' \(first at line"):
        parse_constitution(text, "c.yaml")


def test_a_constitution_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    from cai_core.constitution import MAX_BYTES

    big = tmp_path / "big.yaml"
    big.write_text(VALID + "# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ConstitutionError, match=rf"big.yaml: {MAX_BYTES + len(VALID) + 3:,} bytes; a constitution"):
        load_constitution(big)
    with pytest.raises(ConstitutionError, match="at most"):
        parse_constitution(big.read_text(), "pasted")


# --- one parse a load ---------------------------------------------------------------------------------


def test_a_constitution_is_read_in_one_pass_with_its_lines_and_refusals(monkeypatch):
    """The line index for error messages, the alias and duplicate-key refusals and the data come from one parse
    (they took three: events, a composed tree, then safe_load, ten times the time of one parse under libyaml)."""
    for name in ("parse", "compose", "safe_load", "load"):
        monkeypatch.setattr(yaml, name, lambda *a, name=name, **kw: pytest.fail(f"a second pass: yaml.{name}"))
    assert load_constitution(SHIPPED / "hhh.yaml").name
    with pytest.raises(ConstitutionError, match="bad.yaml, line 9: principle 1 \\('harm'\\), field 'tagz'"):
        parse_constitution(VALID.replace("    tags: [harmless]", "    tagz: [harmless]"), "bad.yaml")
    with pytest.raises(ConstitutionError, match=r"line 3: duplicate key 'name' \(first at line 1\)"):
        parse_constitution(VALID.replace("description: two principles", "description: two principles\nname: Again"))


@pytest.fixture
def without_libyaml(monkeypatch):
    """cai_core.constitution as it loads where PyYAML was built without libyaml: a copy of the module, which
    parses with PyYAML's own parser (in the package, for its relative imports)."""
    monkeypatch.setitem(sys.modules, "yaml._yaml", None)  # `from yaml._yaml import ...` raises ImportError
    spec = importlib.util.spec_from_file_location(
        "cai_core.constitution_without_libyaml", cai_core.constitution.__file__
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_without_libyaml_the_same_data_lines_and_refusals(without_libyaml):
    assert (
        without_libyaml._Parser.__module__ == "cai_core.constitution_without_libyaml"
    )  # PyYAML's parser, not libyaml's
    for path in list_constitutions(SHIPPED):
        assert without_libyaml.load_constitution(path).canonical_json() == load_constitution(path).canonical_json()
    bad = {
        "bomb.yaml": "name: x\n" + BILLION_LAUGHS.replace("a: &a", "description: &a", 1),
        "dup.yaml": VALID.replace("description: two principles", "description: two principles\nname: Again"),
        "field.yaml": VALID.replace("    tags: [harmless]", "    tagz: [harmless]"),
        "broken.yaml": "name: x\nprinciples: [\n  - bad",
    }
    for source, text in bad.items():
        with pytest.raises(without_libyaml.ConstitutionError) as pure:
            without_libyaml.parse_constitution(text, source)
        with pytest.raises(ConstitutionError) as fast:
            parse_constitution(text, source)
        # the same words, but a malformed file's problem is worded by each parser its own way
        assert str(pure.value).partition("YAML: ")[0] == str(fast.value).partition("YAML: ")[0], source


# --- the file stays its author's: saving changes only what changed ------------------------------------

AUTHORED = """\
# Our house rules. Keep each request short.
name: Tiny
description: >-
  two principles, written
  over two lines

principles:
  - id: harm  # the one that matters most
    name: Harm
    critique_request: >-
      Say how your last answer
      could cause harm.
    revision_request: Rewrite it without the harm.
    preference_question: Which response is less harmful?
    tags: [harmless, safety]

  - id: honest
    name: Honesty
    critique_request: Say what in your last answer is untrue.
    revision_request: 'Rewrite it truthfully.'
    preference_question: Which response is more honest?
"""


def changed_lines(old: str, new: str) -> list[str]:
    import difflib

    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_a_one_field_change_saved_from_a_form_is_a_one_field_diff(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(AUTHORED)
    original = load_constitution(path)
    harm = original.principles[0].model_copy(update={"preference_question": "Which response is least harmful?"})
    edited = original.model_copy(update={"principles": [harm, original.principles[1]]})
    saved = save_constitution(edited, path)
    assert changed_lines(AUTHORED, path.read_text()) == [
        "-    preference_question: Which response is less harmful?",
        "+    preference_question: Which response is least harmful?",
    ]
    assert saved.version == edited.version == load_constitution(path).version != original.version
    assert saved.version == parse_constitution(edited.to_yaml()).version  # still the hash of the content


def test_saving_unchanged_content_leaves_the_file_byte_for_byte(tmp_path):
    for shipped in list_constitutions(SHIPPED):
        path = tmp_path / shipped.name
        path.write_text(shipped.read_text())
        save_constitution(load_constitution(path), path)
        assert path.read_text() == shipped.read_text(), shipped.name


def test_edits_keep_folded_blocks_flow_lists_and_comments_and_defaults_stay_implicit(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(AUTHORED)
    original = load_constitution(path)
    harm = original.principles[0].model_copy(
        update={"critique_request": "Say how your last answer could hurt someone.", "tags": ["harmless"]}
    )
    honest = original.principles[1].model_copy(update={"enabled": False})
    save_constitution(original.model_copy(update={"principles": [harm, honest]}), path)
    assert changed_lines(AUTHORED, path.read_text()) == [
        "-      Say how your last answer",
        "-      could cause harm.",
        "+      Say how your last answer could hurt someone.",
        "-    tags: [harmless, safety]",
        "+    tags: [harmless]",
        "+    enabled: false",
    ]
    assert load_constitution(path).principles[1].enabled is False
    fewer = original.model_copy(update={"principles": [original.principles[0]]})
    save_constitution(fewer, path)
    assert "# Our house rules" in path.read_text() and "id: honest" not in path.read_text()


def test_yaml_text_is_saved_as_it_was_typed(tmp_path):
    path = tmp_path / "c.yaml"
    save_constitution(AUTHORED, path)
    assert path.read_text() == AUTHORED
