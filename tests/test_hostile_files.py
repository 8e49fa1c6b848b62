"""Files and text made to hurt the server: a gzip bomb, a CSV field past the csv module's limit, a rationale of a
megabyte, a recipe of YAML aliases, a constitution draft its loader would refuse, a model name that is markup."""

from __future__ import annotations

import gzip
import html
import json

import pandas as pd
import pytest

from cai_core.constitution import ConstitutionError, load_constitution, save_constitution
from cai_core.eval_report import EvalSummary, charts
from cai_core.jobs import JobFolder
from cai_core.pairs import PairFileError, read_hh_rlhf
from cai_core.prompts import MAX_FIELD_CHARS, MAX_FILE_BYTES, PromptFileError, load_prompts, read_text
from cai_core.recipe import RecipeError, load_recipe
from cai_core.records import MAX_NOTE_CHARS, AILabel, HumanLabel, Pair, StepVerdict, to_row
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT, Workspace

from .app_pages import open_page
from .browser.seed import FOUR_ROUNDS, seed_pair_texts
from .test_pages import CONSTITUTION, GENERATE, open_constitution, principle_key, texts

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


# --- a constitution draft over the loader's limit -------------------------------------------------------------------


def test_a_draft_its_loader_would_refuse_is_not_saved_and_the_file_stays(ws, tmp_path):
    path = tmp_path / "constitutions" / "hhh.yaml"
    before = path.read_bytes()
    at = open_constitution("hhh.yaml")
    at.text_area(key=principle_key(at, 0, "critique_request")).set_value("Is it harmful? " * 80_000).run()
    at.button(key="save").click().run()
    assert not at.exception, at.exception
    assert "a constitution may hold at most 1,000,000 bytes" in texts(at.error)
    assert path.read_bytes() == before
    assert load_constitution(path).version  # the file still loads


def test_a_file_that_does_not_load_still_offers_its_history_to_restore(ws, tmp_path):
    path = tmp_path / "constitutions" / "hhh.yaml"
    original = load_constitution(path)
    with Store.open(ws) as store:
        store.record_constitution(original, path, "first")
    path.write_text(path.read_text() + "principles: again\n")  # broken elsewhere: a duplicate key
    at = open_constitution("hhh.yaml")
    assert "hhh.yaml does not load" in texts(at.error)
    at.button(key="restore").click().run()
    assert not at.exception, at.exception
    assert load_constitution(path).version == original.version
    assert f"Restored hhh.yaml to version {original.version}" in texts(at.success)


# --- a recipe of aliases or duplicate keys --------------------------------------------------------------------------

RECIPE_LAUGHS = "name:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  - &{chr(98 + n)} [{', '.join(['*' + chr(97 + n)] * 9)}]\n" for n in range(8)
)
"""Nine lines, all of them the recipe's name: a billion strings once the page titles itself with it."""


def test_a_billion_laughs_recipe_is_refused_at_its_first_alias(tmp_path):
    (tmp_path / "laughs.yaml").write_text(RECIPE_LAUGHS)
    with pytest.raises(RecipeError, match=r"laughs\.yaml, line 3: YAML aliases \(\*a\) are not allowed in a recipe"):
        load_recipe(tmp_path / "laughs.yaml")


def test_a_recipe_with_a_duplicate_key_is_refused_naming_both_lines(tmp_path):
    (tmp_path / "twice.yaml").write_text("name: one\niterations: 1\nname: two\n")
    with pytest.raises(RecipeError, match=r"twice\.yaml, line 3: duplicate key 'name' \(first at line 1\)"):
        load_recipe(tmp_path / "twice.yaml")


def test_the_recipe_page_shows_the_refusal_of_a_billion_laughs(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "laughs.yaml").write_text(RECIPE_LAUGHS)
    monkeypatch.setenv("CAI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAI_RECIPES_DIR", str(recipes))
    at = open_page("pages/8_Recipe.py")
    assert not at.exception, at.exception
    assert "YAML aliases (*a) are not allowed in a recipe" in texts(at.error)


def test_save_constitution_never_writes_what_load_constitution_refuses(tmp_path):
    shipped = load_constitution(PROJECT_ROOT / "constitutions" / "hhh.yaml")
    huge = shipped.model_copy(update={"description": "long " * 250_000})
    with pytest.raises(ConstitutionError, match=r"big\.yaml: 1,2\d\d,\d\d\d bytes; a constitution may hold at most"):
        save_constitution(huge, tmp_path / "big.yaml")
    assert not (tmp_path / "big.yaml").exists()


# --- names that plotly would read as markup ---------------------------------------------------------------------------

MARKUP = "<b>BOLD</b><br><i>it</i>"
WRAPPER = "<i>wrap</i> & co"


def hostile_summary() -> EvalSummary:
    """Two models under two wrappers, so that every chart has a legend; one model and one wrapper are markup."""
    empty = pd.DataFrame()
    pairs = {"model": [MARKUP, MARKUP, "base", "base"], "wrapper": [WRAPPER, "none", WRAPPER, "none"]}
    interval = {"low": [0.2] * 4, "high": [0.8] * 4}
    win_rates = pd.DataFrame({"aspect": "harmless", "opponent": "all", **pairs, "win_rate": 0.5, **interval})
    ratings = pd.DataFrame({"aspect": "harmless", "model": [MARKUP, "base"], "rating": 1000, "low": 980, "high": 1020})
    refusals = pd.DataFrame({**pairs, "label": "harmful", "refusal_rate": [0.5, 0.4, 0.3, 0.2], "n": 4, **interval})
    refusals = pd.concat([refusals, refusals.assign(label="benign")], ignore_index=True)
    return EvalSummary("eval-1", None, empty, empty, win_rates, ratings, refusals, empty, empty)


def test_every_chart_gives_plotly_names_as_entities():
    for name, figure in charts(hostile_summary()).items():
        shown = [str(v) for trace in figure.data for v in [trace.name, *(trace.x if trace.x is not None else [])]]
        assert not [text for text in shown if "<" in text], name


def test_the_agreement_pages_charts_give_plotly_a_judge_name_as_entities(tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "data")
    monkeypatch.setenv("CAI_DATA_DIR", str(workspace.root))
    monkeypatch.delenv("CAI_DB", raising=False)
    pairs = seed_pair_texts(12)
    people = [HumanLabel(p.pair_id, who, "ab"[(i + n) % 2]) for i, p in enumerate(pairs) for n, who in enumerate("xy")]
    judge = [
        AILabel("run-1", p.pair_id, "harm", MARKUP, "v1", "sample", "logprob", False, 0, 0.8, 0.3, 0.75, False)
        for p in pairs
    ]
    run = JobFolder.create(workspace.runs_dir, "run-1", {"kind": "label", "model": MARKUP})
    run.append("ai_labels", [to_row(label) for label in judge])
    run.set_progress("done", len(judge), len(judge))
    with Store.open(workspace) as store:
        store.add_pairs(pairs)
        store.import_human_labels(people)
    at = open_page("pages/6_Agreement.py")
    assert not at.exception, at.exception
    figures = {
        json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in at.get("plotly_chart")
    }
    [by_model] = figures["Agreement by judge model"]["data"]
    assert by_model["x"] == [html.escape(MARKUP, quote=False)]
