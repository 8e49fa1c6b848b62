"""A job started on the warm engine service (issue 26: "starts producing within 2 s") spends its start on its own
work, not on importing what only the in-process engines and the database need: by its first stored record it has
imported neither torch nor transformers nor pandas. The stand-in server (tests/fake_engine_server.py) plays the
service; the job runs as the pages start one, `cai resume RUN_ID` in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cai_core import engine_service, jobs
from cai_core.cli import COMMANDS, build_parser, command_named
from cai_core.critique import GenerateConfig
from cai_core.workspace import PROJECT_ROOT

FAKE_SERVER = str(Path(__file__).with_name("fake_engine_server.py"))
# what the in-process engines (torch, transformers) and the database's frames (pandas) bring: seconds each on a
# loaded 2-core machine, against a service that answers in milliseconds
ENGINE_AND_STORE_MODULES = ("torch", "transformers", "trl", "datasets", "vllm", "pandas")

# Runs the job as `python -m cai_core.cli resume` does, noting what is imported when its first record is spooled.
JOB_PROCESS = """
import json, sys
from cai_core import job_folder
imported_then = []
spool = job_folder.JobFolder.append

def append(self, table, rows):
    if not imported_then:
        imported_then.append(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules))
    return spool(self, table, rows)

job_folder.JobFolder.append = append
from cai_core.cli import main
code = main(["--data-dir", sys.argv[1], "resume", sys.argv[3]])
print(json.dumps({"code": code, "imported_at_first_record": imported_then[0] if imported_then else None}))
"""


@pytest.fixture
def warm_service(monkeypatch, workspace, tiny_model_path):
    """A running service for the tiny model (the stand-in server), as `cai engine start` leaves one."""
    monkeypatch.setattr(
        engine_service,
        "server_command",
        lambda model, name, dtype, port: (
            [sys.executable, FAKE_SERVER, "--served-model-name", name] + ["--host", "127.0.0.1", "--port", str(port)]
        ),
    )
    monkeypatch.setenv(engine_service.START_TIMEOUT_ENV, "60")
    yield engine_service.start(workspace, tiny_model_path, owner="cli")
    engine_service.stop(workspace)


def test_a_job_on_the_warm_service_imports_no_engine_or_dataframe_before_its_first_record(
    warm_service, workspace, tiny_model_path
):
    config = GenerateConfig(
        constitution=str(PROJECT_ROOT / "constitutions" / "hhh.yaml"),
        prompts=str(PROJECT_ROOT / "data" / "demo_prompts.jsonl"),
        model=f"service:{tiny_model_path}",
        rounds=1,
        limit=2,
        max_new_tokens=8,
    )
    job = jobs.prepare("generate", config, workspace)
    finished = subprocess.run(
        [sys.executable, "-c", JOB_PROCESS, str(workspace.root), json.dumps(ENGINE_AND_STORE_MODULES), job.run_id],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    outcome = json.loads(finished.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "imported_at_first_record": []}
    steps = list(job.records("trace_steps"))
    assert len(steps) == 4 and {step["round"] for step in steps} == {0, 1}  # the job did its work on the service
    assert all(step["response"].startswith("echo:") for step in steps if step["round"] == 0)


def test_each_command_is_parsed_by_its_own_module_alone():
    """`cai COMMAND` imports only the module `COMMANDS` names for it: the table must say what each module adds."""
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert set(verbs) == {command for commands in COMMANDS.values() for command in commands}
    for commands in COMMANDS.values():
        for command in commands:
            assert set(build_parser(command)._subparsers._group_actions[0].choices) == set(commands)
    assert command_named(["--data-dir", "resume", "--db", "x.duckdb", "resume", "gen-1"]) == "resume"
    assert command_named(["--help"]) is None and command_named(["resum"]) is None  # the whole parser answers
