import json

import pytest

from cai_core.prompts import PromptFileError, load_prompts
from cai_core.workspace import PROJECT_ROOT


def test_demo_prompts_mix_harmful_and_ordinary_requests():
    prompts = load_prompts(PROJECT_ROOT / "data" / "demo_prompts.jsonl").prompts
    categories = {p.category for p in prompts}
    assert len(prompts) >= 20
    assert {"harmful", "benign"} <= categories


def test_jsonl_csv_txt_and_datasets_folder_agree(tmp_path):
    import datasets

    rows = [
        {"id": "a", "prompt": "Hello there", "category": "benign"},
        {"id": "b", "prompt": "Pick a lock?", "category": "harmful"},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "p.csv").write_text("id,prompt,category\na,Hello there,benign\nb,Pick a lock?,harmful\n")
    (tmp_path / "p.txt").write_text("Hello there\n\nPick a lock?\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    texts = {
        name: [p.prompt for p in load_prompts(tmp_path / name).prompts] for name in ("p.jsonl", "p.csv", "p.txt", "ds")
    }
    assert all(t == ["Hello there", "Pick a lock?"] for t in texts.values())
    assert [p.id for p in load_prompts(tmp_path / "p.txt").prompts] == ["line-1", "line-3"]


def test_column_mapping(tmp_path):
    (tmp_path / "h.csv").write_text("Behavior,SemanticCategory\nDo a bad thing,crime\n")
    [prompt] = load_prompts(tmp_path / "h.csv", prompt_field="Behavior", category_field="SemanticCategory").prompts
    assert (prompt.prompt, prompt.category) == ("Do a bad thing", "crime")


BAD_JSONL = "".join(
    [
        '{"id": "a", "prompt": "fine"}\n',
        '{"id": "b", "prompt": \n',
        '{"id": "c"}\n',
        '["not", "an", "object"]\n',
        '{"id": "a", "prompt": "dup"}\n',
        '{"id": "e", "prompt": "fine too"}\n',
    ]
)


def test_bad_lines_are_reported_with_their_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD_JSONL)
    with pytest.raises(PromptFileError) as err:
        load_prompts(path)
    message = str(err.value)
    assert "4 bad line(s)" in message
    for line, why in [
        (2, "not valid JSON"),
        (3, "missing or empty 'prompt'"),
        (4, "expected an object"),
        (5, "duplicate id 'a'"),
    ]:
        assert f"bad.jsonl:{line}: {why}" in message


def test_skip_mode_keeps_the_good_lines_and_lists_the_bad(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD_JSONL)
    loaded = load_prompts(path, on_bad_line="skip")
    assert [p.id for p in loaded.prompts] == ["a", "e"]
    assert len(loaded.problems) == 4


def test_missing_unknown_and_empty_sources(tmp_path):
    with pytest.raises(PromptFileError, match="no such prompt file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(PromptFileError, match="unknown prompt format"):
        load_prompts(tmp_path / "p.xlsx")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptFileError, match="no prompts found"):
        load_prompts(tmp_path / "empty.txt")


def test_digest_follows_content_not_location(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("one\ntwo\n")
    (tmp_path / "c.txt").write_text("one\nthree\n")
    a, b, c = (load_prompts(tmp_path / n).digest for n in ("a.txt", "b.txt", "c.txt"))
    assert a == b != c
