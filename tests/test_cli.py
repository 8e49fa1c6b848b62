import argparse
import json
import os
import subprocess
import sys

import pytest

from cai_core.cli import build_parser
from cai_core.workspace import PROJECT_ROOT

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")


def cai(*args, data=None, stdin=None, cwd=None):
    prefix = ["--data-dir", str(data)] if data else []
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}  # from another folder too (cwd), this tree's code
    return subprocess.run(
        [sys.executable, "-m", "cai_core.cli", *prefix, *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_every_subcommand_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.format_help().startswith("usage: cai " + name)
    out = cai("generate", "--help")
    assert out.returncode == 0 and "--principle-sampling {random,round_robin}" in out.stdout
    assert "Critique→revision rounds" in out.stdout


def test_validate_reports_a_bad_file_in_one_line_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprinciples:\n  - id: a\n    name: A\n")
    out = cai("constitution", "validate", HHH, str(bad))
    assert out.returncode == 2
    assert "hhh.yaml: ok" in out.stdout
    assert f"error: {bad}, line 3: principle 1 ('a'), field 'critique_request': required field is missing" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.processes
def test_generate_export_diff_and_history_round_trip(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    gen = cai(
        "generate",
        "--constitution",
        HHH,
        "--prompts",
        str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
        "--model",
        tiny_model_path,
        "--limit",
        "3",
        "--rounds",
        "1",
        "--max-new-tokens",
        "4",
        data=data,
    )
    assert gen.returncode == 0, gen.stderr
    assert "done, 6/6 steps" in gen.stdout and "ingested 9 new records" in gen.stdout
    # the progress bar shows the job's own figures, as the pages and `cai jobs` do: count, elapsed, engine and model
    assert "6/6 steps · " in gen.stderr and " elapsed · hf · " in gen.stderr, gen.stderr
    exported = cai("export", "--kind", "pairs", "--format", "jsonl", "--out", str(tmp_path / "p.jsonl"), data=data)
    assert exported.returncode == 0, exported.stderr
    assert all(
        set(json.loads(line)) >= {"prompt", "chosen", "rejected"}
        for line in (tmp_path / "p.jsonl").read_text().splitlines()
    )

    target = tmp_path / "mine.yaml"
    edited = (PROJECT_ROOT / "constitutions" / "customer_service.yaml").read_text().replace("rounds: 2", "rounds: 3")
    assert (
        cai("constitution", "save", "-", str(target), "--note", "three rounds", data=data, stdin=edited).returncode == 0
    )
    original = (PROJECT_ROOT / "constitutions" / "customer_service.yaml").read_text()
    assert cai("constitution", "save", "-", str(target), "--note", "back", data=data, stdin=original).returncode == 0
    history = cai("constitution", "history", str(target), data=data).stdout.splitlines()
    assert [line.split()[-1] for line in history] == ["back", "rounds"]
    old_version, new_version = history[1].split()[1], history[0].split()[1]
    diff = cai("constitution", "diff", old_version, new_version, data=data)
    assert "-  rounds: 3" in diff.stdout and "+  rounds: 2" in diff.stdout
    assert cai("constitution", "restore", str(target), old_version, data=data).returncode == 0
    assert "rounds: 3" in target.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--constitution", HHH, "--prompts", "nope.jsonl"], "nope.jsonl: no such prompt file"),
        (["generate", "--constitution", "nope.yaml", "--prompts", "x.jsonl"], "nope.yaml: no such constitution file"),
        (
            [
                "generate",
                "--constitution",
                HHH,
                "--prompts",
                str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
                "--model",
                "/no/such/model",
                "--limit",
                "1",
            ],
            "model path '/no/such/model' does not exist",
        ),
        (
            [
                "generate",
                "--constitution",
                HHH,
                "--prompts",
                str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
                "--model",
                "openai:m@http://127.0.0.1:9/v1",
                "--limit",
                "1",
            ],
            "could not reach the model server",
        ),
        (["constitution", "show", "0123456789ab"], "no constitution version '0123456789ab'"),
        (["resume", "no-such-run"], "no run 'no-such-run'"),
        (
            ["generate", "--constitution", HHH, "--prompts", "p.jsonl", "--chunk-size", "0"],
            "error: --chunk-size: is 0: it must be at least 1",
        ),
    ],
    ids=[
        "missing-prompts",
        "missing-constitution",
        "missing-model",
        "unreachable-endpoint",
        "unknown-version",
        "unknown-run",
        "chunk-size-0",
    ],
)
def test_user_errors_are_one_clear_line(args, message, tmp_path):
    out = cai(*args, data=tmp_path / "data")
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.processes
def test_a_reader_that_goes_away_is_no_error(workspace):
    """`cai jobs | head -1`: no "Broken pipe" complaint when head stops reading."""
    from cai_core.jobs import JobFolder

    for i in range(1500):  # more lines than a pipe holds, so the writer meets the closed pipe
        JobFolder.create(workspace.runs_dir, f"run-{i:04d}", {"kind": "generate", "model": "m"})
    command = f"{sys.executable} -m cai_core.cli --data-dir {workspace.root} jobs | head -1"
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert out.stdout.count("\n") == 1
    assert out.stderr == ""


def test_a_failing_command_says_why_in_one_line(tmp_path):
    data = tmp_path / "data"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q"}\nnot json\n{"prompt": "q", "response_a": "a"}\n')
    bad = cai("pairs", "import", str(tmp_path / "bad.jsonl"), data=data)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1  # three bad lines, one line saying so
    assert "3 bad line(s)" in bad.stderr and "bad.jsonl:2" in bad.stderr
    nothing = cai("export", "--kind", "sft", data=data)
    assert nothing.returncode == 2 and nothing.stderr.startswith("error: nothing to export")


@pytest.mark.processes
def test_bench_flags_come_from_its_config_and_all_reach_the_benchmark(tiny_model_path, tmp_path):
    out = cai(
        "bench",
        "generate",
        "--model",
        tiny_model_path,
        "--prompts",
        "1",
        "--rounds",
        "1",
        "--new-tokens",
        "2",
        "--dtype",
        "bfloat16",
        data=tmp_path / "data",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dtype"] == "bfloat16"  # parsed and, before, never passed on


def every_option(parser, path=("cai",)):
    """(command path, option action) for every option of every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_option(sub, (*path, name))
        elif action.option_strings:
            yield " ".join(path), action


def test_every_model_flag_and_cai_help_name_the_spec_forms_and_engines():
    from cai_core.backends import MODEL_SPEC_HELP

    parser = build_parser()
    assert all(form in MODEL_SPEC_HELP for form in ("default", "folder", "hub id", "hf:", "vllm:", "openai:MODEL@URL"))
    assert MODEL_SPEC_HELP in " ".join(parser.format_help().split())
    model_flags = {"--model", "--judge", "--policy", "--critic", "--critic-model", "--monitor-judge"}
    found = {
        f"{command} {flag}": " ".join((action.help or "").split())
        for command, action in every_option(parser)
        for flag in action.option_strings
        if flag in model_flags
    }
    # a filter on the model name traces recorded, not a model to load
    assert "model name" in found.pop("cai traces list --model")
    # training loads its model with transformers: its help says so rather than leaving the prefixes to a guess
    training = {
        flag: text for flag, text in found.items() if flag.startswith("cai train ") and flag.endswith("--model")
    }
    assert training and all("hf:" in text and "vllm:" in text for text in training.values()), training
    specs = {flag: text for flag, text in found.items() if flag not in training}
    assert {"cai label --model", "cai eval run --judge", "cai calibrate --model", "cai generate --critic-model"} <= set(
        specs
    )
    assert [flag for flag, text in specs.items() if MODEL_SPEC_HELP not in text] == []
