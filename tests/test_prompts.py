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


LATIN1 = "Hello there\nQuelle est la capitale de la Cor\xe9e ?\n"  # é as Latin-1 (0xe9) on line 2


@pytest.mark.parametrize(
    ("name", "content", "column"),
    [
        ("p.txt", LATIN1, 33),
        ("p.jsonl", '{"prompt": "Hello"}\n{"prompt": "Cor\xe9e"}\n', 16),
        ("p.csv", "prompt\nCor\xe9e\n", 4),
    ],
)
def test_a_file_that_is_not_utf8_names_the_file_line_byte_and_the_encoding_expected(tmp_path, name, content, column):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(PromptFileError) as caught:
        load_prompts(path)
    assert str(caught.value).startswith(f"{path}, line 2, column {column}: byte 0xe9 is not UTF-8")
    assert "must be UTF-8 text" in str(caught.value)


def test_a_utf8_file_with_a_byte_order_mark_reads_as_text(tmp_path):
    (tmp_path / "p.csv").write_bytes("prompt\nCorée ?\n".encode("utf-8-sig"))
    assert [p.prompt for p in load_prompts(tmp_path / "p.csv").prompts] == ["Corée ?"]


def test_eval_set_columns_and_pair_imports_name_a_non_utf8_line_too(tmp_path):
    from cai_core.evalsets import source_columns
    from cai_core.pairs import PairFileError, read_hh_rlhf, read_pairs_file

    (tmp_path / "set.csv").write_bytes("Behavior,Cat\xe9gorie\nx,y\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match=r"set.csv, line 1, column 13: byte 0xe9 is not UTF-8"):
        source_columns(str(tmp_path / "set.csv"))
    (tmp_path / "pairs.csv").write_bytes("prompt,response_a,response_b\np,caf\xe9,tea\n".encode("latin-1"))
    with pytest.raises(PairFileError, match=r"pairs.csv, line 2, column 6: byte 0xe9 is not UTF-8"):
        read_pairs_file(tmp_path / "pairs.csv")
    import gzip

    (tmp_path / "hh.jsonl.gz").write_bytes(gzip.compress('{"chosen": "caf\xe9"}\n'.encode("latin-1")))
    with pytest.raises(PairFileError, match=r"hh.jsonl.gz, line 1, column 16: byte 0xe9"):
        read_hh_rlhf(tmp_path / "hh.jsonl.gz")
