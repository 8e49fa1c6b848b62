import gzip
import json
import subprocess
import sys

import pytest

from cai_core import jobs
from cai_core.critique import GenerateConfig
from cai_core.pairs import (
    PairFileError,
    SampleConfig,
    read_hh_rlhf,
    read_labels_file,
    read_pairs_file,
    sl_cai_pairs,
    split_transcript,
    transcript_messages,
)
from cai_core.records import HumanLabel
from cai_core.store import Store
from cai_core.workspace import PROJECT_ROOT

from .conftest import require_shared_data

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
DEMO = str(PROJECT_ROOT / "data" / "demo_prompts.jsonl")


def hh_line(prompt_turns: str, chosen: str, rejected: str) -> str:
    return json.dumps(
        {"chosen": f"{prompt_turns}\n\nAssistant: {chosen}", "rejected": f"{prompt_turns}\n\nAssistant: {rejected}"}
    )


def test_a_transcript_splits_at_its_last_assistant_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and now?\n\nAssistant: now this"
    assert split_transcript(text) == ("Human: hi\n\nAssistant: hello\n\nHuman: and now?", "now this")
    assert transcript_messages(split_transcript(text)[0]) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    with pytest.raises(PairFileError, match="Assistant"):
        split_transcript("\n\nHuman: no answer here")


def test_hh_rlhf_sides_are_seeded_coins_and_labels_name_the_chosen(tmp_path):
    lines = [hh_line(f"\n\nHuman: question {i}", f"kind answer {i}", f"rude answer {i}") for i in range(40)]
    lines.append(hh_line("\n\nHuman: same", "identical", "identical"))
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    found = read_hh_rlhf(path)
    again = read_hh_rlhf(path)
    assert [(p.pair_id, p.response_a) for p in found.pairs] == [(p.pair_id, p.response_a) for p in again.pairs]
    assert len(found.pairs) == 41 and found.ties == 1
    sides = {p.origin_a for p in found.pairs[:40]}
    assert sides == {"chosen", "rejected"}  # both placements occur
    for p, label in zip(found.pairs, found.labels, strict=True):
        assert p.prompt.startswith("Human: ") and label.annotator == "hh-rlhf" and label.pair_id == p.pair_id
        if p.response_a == p.response_b:
            assert label.choice == "tie"
        else:
            chosen = p.response_a if label.choice == "a" else p.response_b
            assert chosen.startswith("kind") and (label.choice == "a") == (p.origin_a == "chosen")
    assert p.origin == "hh.jsonl.gz" and found.pairs[3].origin_index == 4
    assert len(read_hh_rlhf(path, limit=5).pairs) == 5


def test_bad_hh_rlhf_lines_are_reported_by_number_or_skipped(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(
        "\n".join(
            [
                hh_line("\n\nHuman: ok", "a", "b"),
                '{"chosen": "x"}',
                "{not json",
                json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"}),
                json.dumps({"chosen": "no turns", "rejected": "no turns"}),
            ]
        )
    )
    with pytest.raises(PairFileError) as error:
        read_hh_rlhf(path)
    message = str(error.value)
    assert "4 bad line(s)" in message and "skip bad lines" in message
    assert f"{path}:2: expected an object" in message and f"{path}:3: not valid JSON" in message
    assert f"{path}:4: 'chosen' and 'rejected' differ" in message and f"{path}:5: no 'Assistant:' turn" in message
    skipped = read_hh_rlhf(path, skip_bad_lines=True)
    assert len(skipped.pairs) == 1 and len(skipped.problems) == 4


def test_the_real_hh_rlhf_file(workspace):
    path = require_shared_data("hh-rlhf", "harmless-base-test-part1.jsonl.gz")
    found = read_hh_rlhf(path, limit=100)
    assert len(found.pairs) == len(found.labels) == 100 and not found.problems
    assert all(p.prompt.startswith("Human:") and (p.response_a or p.response_b) for p in found.pairs)
    # some final Assistant turns really are empty (line 87 here): kept, an empty answer is an answer
    assert [p.origin_index for p in found.pairs if not (p.response_a and p.response_b)] == [87]
    assert 25 <= sum(label.choice == "a" for label in found.labels) <= 75  # the coin really is random
    with gzip.open(path, "rt") as f:
        raw = [json.loads(line) for line in f]
    everything = read_hh_rlhf(path)
    identical = sum(split_transcript(r["chosen"])[1] == split_transcript(r["rejected"])[1] for r in raw)
    assert everything.ties == identical and len(everything.pairs) == len(raw) == 1156
    with Store.open(workspace) as store:
        assert store.add_pairs(found.pairs) == 100 and store.add_pairs(found.pairs) == 0  # ids are content hashes
        store.import_human_labels(found.labels)
        assert len(store.human_labels(annotator="hh-rlhf")) == 100
        first = store.pairs(limit=1)[0]
    assert first.origin_index == 1 and first.pair_id == found.pairs[0].pair_id


def test_generic_labels_files_in_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("pair_id,label,annotator,rationale\np1,A,ann,clearer\np2,Both_Bad,bo,\np1,b,ann,changed\n")
    labels = read_labels_file(csv_file).labels
    assert [(x.pair_id, x.annotator, x.choice, x.rationale) for x in labels] == [
        ("p1", "ann", "b", "changed"),  # the later line for (p1, ann) corrects the earlier one
        ("p2", "bo", "both_bad", ""),
    ]
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"pair_id": "p1", "label": "tie"}\n{"pair_id": "p2", "label": "maybe"}\n{"label": "a"}\n')
    with pytest.raises(PairFileError) as error:
        read_labels_file(jsonl, annotator="cy")
    assert f"{jsonl}:2: label 'maybe'" in str(error.value) and f"{jsonl}:3: missing or empty 'pair_id'" in str(
        error.value
    )
    assert [x.annotator for x in read_labels_file(jsonl, annotator="cy", skip_bad_lines=True).labels] == ["cy"]
    with pytest.raises(PairFileError, match="missing or empty 'annotator'"):
        read_labels_file(jsonl)


def test_labels_for_unknown_pairs_are_refused_whole(workspace, tmp_path):
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("pair_id,prompt,response_a,response_b\nx1,q,a,b\n,q2,a2,b2\n")
    pairs = read_pairs_file(pairs_file).pairs
    assert pairs[0].pair_id == "x1" and pairs[1].pair_id.startswith("p-") and pairs[1].origin_index == 3
    with Store.open(workspace) as store:
        store.add_pairs(pairs)
        with pytest.raises(KeyError, match="1 label"):
            store.import_human_labels([HumanLabel("x1", "ann", "a"), HumanLabel("nope", "ann", "a")])
        assert store.human_labels() == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "response_a": "a"}\n')
    with pytest.raises(PairFileError, match="missing or empty 'response_b'"):
        read_pairs_file(bad)


def test_sl_cai_pairs_are_first_answer_against_final_revision(tiny_model_path, workspace):
    config = GenerateConfig(
        constitution=HHH, prompts=DEMO, model=tiny_model_path, rounds=2, limit=4, max_new_tokens=6, temperature=1.0
    )
    jobs.run("generate", config, workspace)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        pairs = sl_cai_pairs(store)
        steps = store.final_steps()
        assert store.add_pairs(pairs) == len(pairs) > 0
    by_trace = {row.trace_id: row for row in steps.itertuples()}
    for p in pairs:
        row = by_trace[p.origin]
        assert p.source == "sl-cai" and p.prompt == row.prompt
        sides = {p.origin_a: p.response_a, p.origin_b: p.response_b}
        assert sides == {"initial": row.initial.strip(), f"revision {row.round}": row.revision.strip()}
    assert len(pairs) == sum(r.initial.strip() != r.revision.strip() for r in steps.itertuples())


def test_sampling_pairs_k_answers_and_resumes_without_resampling(tiny_model_path, workspace):
    config = SampleConfig(prompts=DEMO, model=tiny_model_path, k=3, limit=5, max_new_tokens=8, chunk_size=2)
    job = jobs.run("pairs", config, workspace)
    pairs = job.read("pairs")
    samples = job.read("samples")
    assert len(samples) == 5 and all(len(s["responses"]) == 3 for s in samples)
    expected = sum(
        len(
            {
                (i, j)
                for i in range(3)
                for j in range(i + 1, 3)
                if s["responses"][i].strip() != s["responses"][j].strip()
            }
        )
        for s in samples
    )
    assert len(pairs) == expected > 0 and {p["source"] for p in pairs} == {"sampled"}
    # a kill between a prompt's answers and its pairs: the pairs are derived again, identically
    lines = job.records_path("pairs").read_text().splitlines(keepends=True)
    job.records_path("pairs").write_text("".join(lines[:-2]))
    again = jobs.run("pairs", config, workspace)

    def content(rows):
        return [{k: v for k, v in r.items() if k != "created_at"} for r in rows]

    assert content(again.read("pairs")) == content(pairs) and again.read("samples") == samples
    adjacent = jobs.run("pairs", SampleConfig(**{**config.__dict__, "pairing": "adjacent"}), workspace)
    assert all(p["origin_b"] == f"sample {int(p['origin_a'].split()[1]) + 1}" for p in adjacent.read("pairs"))
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        assert store.count_pairs("sampled") == len({p["pair_id"] for p in pairs + adjacent.read("pairs")})
    with pytest.raises(ValueError, match="at least 2"):
        jobs.run("pairs", SampleConfig(prompts=DEMO, model=tiny_model_path, k=1), workspace)


def cai(*args, data):
    return subprocess.run(
        [sys.executable, "-m", "cai_core.cli", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.processes
def test_cli_imports_pairs_and_labels_and_reports_user_errors_in_one_line(tmp_path):
    data = tmp_path / "data"
    hh = tmp_path / "hh.jsonl"
    hh.write_text("\n".join(hh_line(f"\n\nHuman: q{i}", f"good {i}", f"bad {i}") for i in range(6)) + "\n")
    out = cai("import-labels", str(hh), "--limit", "4", data=data)
    assert out.returncode == 0, out.stderr
    assert "read 4 hh-rlhf pairs (4 new)" in out.stdout and "0 pair(s) had identical responses" in out.stdout
    with Store.open(data / "cai.duckdb") as store:
        pair_id = store.pairs(limit=1)[0].pair_id
    (tmp_path / "mine.csv").write_text(f"pair_id,label\n{pair_id},tie\n")
    out = cai("import-labels", str(tmp_path / "mine.csv"), "--annotator", "ann", data=data)
    assert out.returncode == 0 and "imported 1 human label" in out.stdout
    errors = [
        (cai("import-labels", str(tmp_path / "nope.csv"), data=data), "no such file"),
        (cai("pairs", "import", str(hh), data=data), "missing or empty 'prompt'"),
        (cai("label", "--constitution", HHH, "--source", "sampled", data=data), "no pairs to label"),
        (cai("export", "--kind", "preferences", "--min-confidence", "2", data=data), "min confidence 2.0"),
    ]
    (tmp_path / "other.csv").write_text("pair_id,label,annotator\nnot-a-pair,a,ann\n")
    errors.append((cai("import-labels", str(tmp_path / "other.csv"), data=data), "name pairs that are not stored"))
    for out, message in errors:
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("error: ")


@pytest.mark.processes
def test_cli_samples_pairs_then_resume_by_run_id_adds_nothing(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    args = ["pairs", "sample", "--prompts", DEMO, "--model", tiny_model_path, "--k", "3", "--limit", "2"]
    out = cai(*args, "--max-new-tokens", "6", data=data)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split(":")[0]
    assert run_id.startswith("pairs-") and "done, 2/2 prompts" in out.stdout
    resumed = cai("resume", run_id, data=data)
    assert resumed.returncode == 0 and "ingested 0 new records" in resumed.stdout
    with Store.open(data / "cai.duckdb") as store:
        assert 0 < store.count_pairs("sampled") <= 2 * 3
