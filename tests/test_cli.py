import json
import subprocess
import sys

import pytest

from cai_core.cli import build_parser
from cai_core.workspace import PROJECT_ROOT

HHH = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")


def cai(*args, data=None, stdin=None):
    prefix = ["--data-dir", str(data)] if data else []
    return subprocess.run(
        [sys.executable, "-m", "cai_core.cli", *prefix, *args], capture_output=True, text=True, input=stdin, timeout=300
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
    ],
    ids=[
        "missing-prompts",
        "missing-constitution",
        "missing-model",
        "unreachable-endpoint",
        "unknown-version",
        "unknown-run",
    ],
)
def test_user_errors_are_one_clear_line(args, message, tmp_path):
    out = cai(*args, data=tmp_path / "data")
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
