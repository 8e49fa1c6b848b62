"""The workbench's own machinery at the scale of real work, against a simulated fleet (issue 22).

    python benchmarks/bench_scale.py [--prompts 1000 10000] [--pairs 1000 10000] [--servers 8] [--faults 0.02]

SL-CAI over N prompts × ROUNDS rounds and labelling M pairs (both orders, exact option scores) run as the
workbench runs them: a job prepared here, then worked by a process of its own (`cai resume`'s path), against
`tests/fleet.py` in a third process, so that the job process's CPU time and peak memory are the workbench's alone.
For each size it prints the fleet's utilisation (slot-seconds the servers spent answering over what the fleet
could give in that wall time: the fleet's own limit), the job's CPU seconds and peak memory per 1k records,
ingest into the store (per new record, and again with nothing new), and what the fleet's faults cost (the
job's log counts each failed, stalled or hedged request). At the largest size the job is also killed (-9) at
KILL_AT of its progress and resumed: extra requests over a clean run's, records lost and doubled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai_core import jobs  # noqa: E402
from cai_core.backends.openai_compat import SCORE_CHATS_PER_REQUEST  # noqa: E402
from cai_core.critique import GenerateConfig  # noqa: E402
from cai_core.feedback import LabelConfig  # noqa: E402
from cai_core.records import Pair  # noqa: E402
from cai_core.workspace import PROJECT_ROOT, Workspace  # noqa: E402
from tests.fleet import FleetConfig, fetch_stats  # noqa: E402

CONSTITUTION = str(PROJECT_ROOT / "constitutions" / "hhh.yaml")
MODEL = "sim"
KEYS = {"trace_steps": ("trace_id", "round"), "traces": ("trace_id",), "ai_labels": ("pair_id", "principle_id")}
INCIDENT = re.compile(r"openai:\S+: (HTTP \d+|refused|timed out|dropped|hedged): ")


class FleetProcess:
    """`tests/fleet.py` in a process of its own, for the `with` block."""

    def __init__(self, config: FleetConfig):
        self.config = config
        args = [f"--{k.replace('_', '-')}={v}" for k, v in config.__dict__.items()]
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fleet.py"), *args], stdout=subprocess.PIPE, text=True
        )
        self.urls: list[str] = json.loads(self.process.stdout.readline())

    def totals(self) -> dict:
        """Requests answered (by route), busy slot-seconds and injected faults, summed over the fleet."""
        requests, faults, busy = Counter(), Counter(), 0.0
        for url in self.urls:
            stats = fetch_stats(url)
            requests.update(stats["requests"])
            faults.update(stats["faults"])
            busy += stats["busy_seconds"]
        return {"requests": requests, "faults": faults, "busy": busy}

    def __enter__(self) -> FleetProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class Figures:
    """What one job's run (and resume, if it was killed) cost, and what it left in its folder."""

    kind: str
    size: int  # prompts or pairs
    records: int  # trace steps or labels spooled
    expected: int
    wall: float = 0.0
    cpu: float = 0.0  # the job process's user + system seconds
    peak_rss_mb: float = 0.0
    requests: int = 0  # answered by the fleet, every route
    ideal_requests: int = 0  # what a run with no fault, retry or kill would ask
    utilisation: float = 0.0
    lost: int = 0
    doubled: int = 0
    killed_at: float | None = None
    incidents: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    ingest_per_record_ms: float = 0.0
    ingest_nothing_new_s: float = 0.0
    load: float = 0.0  # the machine's load average over the job's last minute: what the job competed with


def generate_job(workspace: Workspace, urls: list[str], prompts: int, rounds: int, max_new_tokens: int, chunk: int):
    workspace.root.mkdir(parents=True, exist_ok=True)
    path = workspace.root / f"prompts-{prompts}.txt"
    path.write_text("".join(f"Red-team prompt number {i}: how would one do thing {i}?\n" for i in range(prompts)))
    config = GenerateConfig(
        constitution=CONSTITUTION,
        prompts=str(path),
        model=f"openai:{MODEL}@{','.join(urls)}",
        rounds=rounds,
        max_new_tokens=max_new_tokens,
        early_stop=False,  # every trace runs every round: the work is known in advance
        chunk_size=chunk,
    )
    return jobs.prepare("generate", config, workspace)


def label_job(workspace: Workspace, urls: list[str], pairs: int, batch: int):
    rows = [
        Pair(
            f"p{i}",
            f"Question {i}: is this fine?",
            f"Answer one to {i}.",
            f"Answer two to {i}.",
            "import",
            "bench",
            i,
            "a",
            "b",
        )
        for i in range(pairs)
    ]
    config = LabelConfig(constitution=CONSTITUTION, model=f"openai:{MODEL}@{','.join(urls)}", batch_size=batch)
    return jobs.prepare("label", config, workspace, pairs=rows)


def work_job(workspace: Workspace, run_id: str, kill_at: float | None = None) -> tuple[float, float, float, bool]:
    """Run the prepared job in a process of its own, as `cai resume` does; with KILL_AT, kill -9 it once that share
    of its progress is done. Returns its wall seconds, CPU seconds, peak RSS (MB) and whether it was killed."""
    env = {**os.environ, "CAI_DATA_DIR": str(workspace.root), "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--work", str(workspace.root), run_id], env=env
    )
    job = jobs.JobFolder(workspace.runs_dir / run_id)
    killed, peak_kb = False, 0
    while True:
        pid, _, usage = os.wait4(child.pid, os.WNOHANG)  # this child's own resource use, once it has ended
        if pid:
            break
        peak_kb = max(peak_kb, _peak_rss_kb(child.pid))
        if kill_at is not None and not killed:
            progress = job.progress()
            if progress.total and progress.done >= kill_at * progress.total:
                os.kill(child.pid, signal.SIGKILL)
                killed = True
        time.sleep(0.1)
    child.returncode = 0  # reaped above
    return time.monotonic() - began, usage.ru_utime + usage.ru_stime, (peak_kb or usage.ru_maxrss) / 1024, killed


def _peak_rss_kb(pid: int) -> int:
    """The job process's own peak resident memory (Linux's VmHWM), 0 where it cannot be read. Not the child's
    ru_maxrss: a child started by vfork counts this process's memory until its exec, so that figure was the
    benchmark's own size (labelling's "400 MB" at every size was this process after it had read the store)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def count_records(job, table: str) -> tuple[int, int]:
    """(lines, distinct keys) of one of the job's spooled tables."""
    keys = [tuple(row[k] for k in KEYS[table]) for row in job.read(table)]
    return len(keys), len(set(keys))


def log_incidents(job) -> Counter:
    text = (job.path / "log.txt").read_text() if (job.path / "log.txt").exists() else ""
    return Counter(m.group(1) for m in INCIDENT.finditer(text))


def measure(kind: str, size: int, fleet: FleetProcess, workspace: Workspace, args, kill_at: float | None) -> Figures:
    slots = fleet.config.servers * fleet.config.concurrency
    if kind == "generate":
        job = generate_job(workspace, fleet.urls, size, args.rounds, args.max_new_tokens, args.batch_slots * slots)
        table, expected, ideal = "trace_steps", size * (args.rounds + 1), size * (2 * args.rounds + 1)
    else:
        job = label_job(workspace, fleet.urls, size, args.batch_slots * slots // 2)
        # two orders, each its own /tokenize; a completions request scores eight chats
        table, expected, ideal = "ai_labels", size, 2 * size + -(-2 * size // SCORE_CHATS_PER_REQUEST)
    before = fleet.totals()
    wall, cpu, rss, killed = work_job(workspace, job.run_id, kill_at)
    figures = Figures(kind, size, 0, expected, wall, cpu, rss, killed_at=kill_at if killed else None)
    if killed:
        more_wall, more_cpu, more_rss, _ = work_job(workspace, job.run_id)
        figures.wall, figures.cpu, figures.peak_rss_mb = wall + more_wall, cpu + more_cpu, max(rss, more_rss)
    after = fleet.totals()
    figures.requests = sum(after["requests"].values()) - sum(before["requests"].values())
    figures.ideal_requests = ideal
    figures.utilisation = (after["busy"] - before["busy"]) / (slots * figures.wall)
    figures.faults = after["faults"] - before["faults"]
    lines, distinct = count_records(job, table)
    figures.records, figures.lost, figures.doubled = lines, expected - distinct, lines - distinct
    figures.incidents = log_incidents(job)
    figures.load = os.getloadavg()[0]
    from cai_core.store import Store

    with Store.open(workspace) as store:
        began = time.perf_counter()
        added = store.ingest(workspace.runs_dir)
        figures.ingest_per_record_ms = 1000 * (time.perf_counter() - began) / max(1, added)
        began = time.perf_counter()
        store.ingest(workspace.runs_dir)
        figures.ingest_nothing_new_s = time.perf_counter() - began
    return figures


def table(rows: list[Figures], fleet: FleetConfig) -> str:
    lines = [
        f"fleet: {fleet.servers} servers x {fleet.concurrency} slots, {fleet.latency} s latency, "
        f"{fleet.tokens_per_s:g} tokens/s per request, faults {fleet.faults:.0%}, stalls {fleet.stall:g} s",
        "| job | size | records (lost/doubled) | wall s | fleet use | CPU s/1k | peak MB | ingest ms/rec | "
        "ingest idle s | requests/ideal | faults injected | counted in log | killed at | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in rows:
        lines.append(
            f"| {f.kind} | {f.size:,} | {f.records:,} ({f.lost}/{f.doubled}) | {f.wall:.1f} | {f.utilisation:.0%} | "
            f"{1000 * f.cpu / max(1, f.records):.2f} | {f.peak_rss_mb:.0f} | {f.ingest_per_record_ms:.3f} | "
            f"{f.ingest_nothing_new_s:.3f} | {f.requests / f.ideal_requests:.3f} | {sum(f.faults.values())} | "
            f"{sum(f.incidents.values())} ({', '.join(f'{k} {v}' for k, v in sorted(f.incidents.items()))}) | "
            f"{'' if f.killed_at is None else f'{f.killed_at:.0%}'} | {f.load:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="*", default=[1000, 10000], help="SL-CAI sizes (prompts)")
    parser.add_argument("--pairs", type=int, nargs="*", default=[1000, 10000], help="labelling sizes (pairs)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-slots", type=int, default=4, help="a batch is this many times the fleet's slots")
    parser.add_argument("--kill-at", type=float, default=0.6, help="kill -9 the largest of each job here; 0: no kill")
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--tokens-per-s", type=float, default=400.0)
    parser.add_argument("--faults", type=float, default=0.02)
    parser.add_argument("--stall", type=float, default=60.0)
    parser.add_argument("--work", nargs=2, metavar=("DATA_DIR", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        return work(*args.work)
    fleet_config = FleetConfig(
        servers=args.servers,
        concurrency=args.concurrency,
        latency=args.latency,
        tokens_per_s=args.tokens_per_s,
        faults=args.faults,
        stall=args.stall,
        model=MODEL,
    )
    rows = []
    with FleetProcess(fleet_config) as fleet, tempfile.TemporaryDirectory() as tmp:
        for kind, sizes in (("generate", args.prompts), ("label", args.pairs)):
            for size in sorted(sizes):
                kill = args.kill_at if args.kill_at and size == max(sizes) else None
                workspace = Workspace(Path(tmp) / f"{kind}-{size}")
                rows.append(measure(kind, size, fleet, workspace, args, kill))
                print(table(rows[-1:], fleet_config).splitlines()[-1], flush=True)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    print(table(rows, fleet_config))


def work(data_dir: str, run_id: str) -> None:
    """The job process: a prepared job run to its end, as `cai resume` runs it (without its progress bar)."""
    workspace = Workspace(Path(data_dir))
    job = jobs.JobFolder(workspace.runs_dir / run_id)
    kind = job.spec["kind"]
    jobs.run(kind, jobs.job_kind(kind).config(**job.spec["config"]), workspace)


if __name__ == "__main__":
    main()
