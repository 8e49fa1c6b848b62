"""Files and text made to hurt the server: a gzip bomb, a CSV field past the csv module's limit, a rationale of a
megabyte, a recipe of YAML aliases, a constitution draft its loader would refuse, a model name that is markup."""

from __future__ import annotations

import gzip
import json

import pytest

from cai_core.pairs import PairFileError, read_hh_rlhf
from cai_core.prompts import MAX_FIELD_CHARS, MAX_FILE_BYTES, PromptFileError, load_prompts, read_text
from cai_core.records import MAX_NOTE_CHARS, HumanLabel, Pair, StepVerdict
from cai_core.store import Store

from .browser.seed import FOUR_ROUNDS
from .test_pages import CONSTITUTION, GENERATE, open_page, texts

# --- a gzip bomb --------------------------------------------------------------------------------------------------


def gzip_bomb(path, megabytes: int):
    """`megabytes` MB of one repeated JSON line, gzipped: a few kB on disk."""
    line = (
        json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}) + "\n"
    ).encode()
    with gzip.open(path, "wb", compresslevel=9) as out:
        block = line * (2**20 // len(line))
        for _ in range(megabytes):
            out.write(block)
    return path


def test_a_gzip_bomb_is_refused_once_the_cap_is_read_naming_the_file_and_the_cap(tmp_path):
    bomb = gzip_bomb(tmp_path / "bomb.jsonl.gz", 10)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(PairFileError, match=r"bomb\.jsonl\.gz: holds more than 1,048,576 bytes once decompressed"):
        read_text(bomb, PairFileError, max_bytes=2**20)


def test_the_import_refuses_a_bomb_over_the_default_cap_without_unpacking_it_whole(tmp_path):
    """What item 3 timed: 307 s and 3.7 GB for 1 GiB before the cap; the import now stops at MAX_FILE_BYTES."""
    assert MAX_FILE_BYTES == 256 * 2**20
    bomb = gzip_bomb(tmp_path / "hh.jsonl.gz", MAX_FILE_BYTES // 2**20 + 1)
    with pytest.raises(PairFileError, match=r"hh\.jsonl\.gz: holds more than 268,435,456 bytes"):
        read_hh_rlhf(bomb)


def test_a_file_under_the_cap_still_reads_whole(tmp_path):
    small = gzip_bomb(tmp_path / "ok.jsonl.gz", 1)
    assert len(read_hh_rlhf(small, limit=3).pairs) == 3


# --- a CSV field past 131,072 characters ------------------------------------------------------------------------


def test_a_csv_prompt_longer_than_the_csv_modules_default_limit_loads(tmp_path):
    long = "x" * 131_073
    (tmp_path / "p.csv").write_text(f"id,prompt\na,{long}\n")
    [prompt] = load_prompts(tmp_path / "p.csv").prompts
    assert prompt.prompt == long


def test_a_csv_field_over_the_cap_is_a_prompt_file_error_naming_the_line(tmp_path):
    (tmp_path / "p.csv").write_text(f'id,prompt\na,fine\nb,"{"x" * (MAX_FIELD_CHARS + 1)}"\n')
    with pytest.raises(PromptFileError, match=r"p\.csv, line 3: not readable as CSV \(field larger than field limit"):
        load_prompts(tmp_path / "p.csv")


def test_the_generate_page_names_the_line_of_an_oversized_csv_field(ws):
    prompts = ws.root / "huge.csv"
    prompts.write_text(f'id,prompt\na,fine\nb,"{"x" * (MAX_FIELD_CHARS + 1)}"\n')
    at = open_page(GENERATE)
    at.text_input(key="gen_prompts").set_value(str(prompts))
    at.button(key="gen_start").click().run()
    assert not at.exception, at.exception
    assert "huge.csv, line 3: not readable as CSV" in texts(at.error)


# --- a rationale or note of a megabyte ----------------------------------------------------------------------------

MEGABYTE_NOTE = "why " * 250_000


def test_a_megabyte_rationale_is_refused_naming_the_field_and_the_limit_and_nothing_is_stored(workspace):
    pair = Pair("p1", "prompt", "left", "right", "import", "f", 1, "a", "b")
    with Store.open(workspace) as store:
        store.add_pairs([pair])
        with pytest.raises(ValueError, match=r"the rationale holds 1,000,000 characters; it may hold 10,000"):
            store.save_human_label(HumanLabel("p1", "ann", "a", False, MEGABYTE_NOTE))
        with pytest.raises(ValueError, match=r"label by 'crowd' on pair 'p1': the rationale holds 1,000,000"):
            store.import_human_labels([HumanLabel("p1", "crowd", "a", False, MEGABYTE_NOTE)])
        assert store.human_labels() == []
        store.save_human_label(HumanLabel("p1", "ann", "a", False, "x" * MAX_NOTE_CHARS))
        assert len(store.human_labels()) == 1


def test_a_megabyte_verdict_note_is_refused(ws):
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        with pytest.raises(ValueError, match=r"round 1: the note holds 1,000,000 characters; it may hold 10,000"):
            store.save_verdict(StepVerdict(FOUR_ROUNDS, 1, "ann", "better", None, MEGABYTE_NOTE))
        assert store.verdicts(FOUR_ROUNDS) == []
        store.save_verdict(StepVerdict(FOUR_ROUNDS, 1, "ann", "better", None, "kinder"))
        assert [v.note for v in store.verdicts(FOUR_ROUNDS)] == ["kinder"]


def test_the_pages_note_fields_stop_at_the_same_limit(ws):
    at = open_page(CONSTITUTION)
    assert at.text_input(key="save_note").proto.max_chars == MAX_NOTE_CHARS
