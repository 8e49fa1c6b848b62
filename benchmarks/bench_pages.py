"""The redraw time of every page on seeded data, against issue 13's target of under 0.5 s a redraw.

    python benchmarks/bench_pages.py [--repeats 5] [--traces 0] [--pages Traces Evaluate]
    python benchmarks/bench_pages.py --at-scale [--keep DIR]    # issue 22: 1M labels, 100k traces, 200 runs

Each page runs under Streamlit's AppTest (the script as the server runs it, without a browser): once to open it
(a first draw also imports what the page needs), then REPEATS redraws with nothing changed, as a click on a
widget that changes nothing costs. The data is the browser tests' seed (a four-round trace, a hostile one, 30
pairs with an AI label run) plus TRACES synthetic traces of four rounds each, in a fresh folder.

`--at-scale` adds to that seed what a real workspace holds after months of work, spooled into job folders as the
jobs write them and ingested once before the pages open: LABELS AI labels (PAIRS pairs, each labelled by one
principle in each of LABELS/PAIRS label runs), HUMAN people's labels on them (imported), TRACES traces split over
generation runs, and job folders of other kinds up to RUNS in all. Each page is then timed on the small seed and
on the large one in the same run, so that the ratio between the two holds whatever else the machine is doing.
Seeding the large one takes minutes; `--keep DIR` keeps it (and reuses it when DIR holds it already).

A redraw under AppTest leaves out the browser's own work and the websocket: the real server adds those. The scripts
are compiled once, as the server does (AppTest alone would compile them again on every run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai_core.constitution import load_constitution  # noqa: E402
from cai_core.jobs import JobFolder  # noqa: E402
from cai_core.records import HumanLabel, Pair, Trace, TraceStep, to_row  # noqa: E402
from cai_core.store import Store  # noqa: E402
from cai_core.workspace import Workspace  # noqa: E402
from tests.browser.seed import logprob_label, seed_pairs, seeded_data  # noqa: E402

TARGET = 0.5  # seconds a redraw, issue 13 item 8


CHUNK = 50_000  # records spooled per write: the seed's memory stays flat whatever its size


def add_traces(runs_dir: Path, n: int, runs: int = 1) -> None:
    """N finished four-round traces split over RUNS generation runs, spooled as a generation job writes them."""
    for r in range(runs):
        run_id = "bench-run" if runs == 1 else f"bench-run-{r:03d}"
        job = JobFolder.create(runs_dir, run_id, {"kind": "generate", "model": "bench-model", "config": {}})
        mine = range(r, n, runs)
        for chunk in range(0, len(mine), CHUNK):
            traces, steps = [], []
            for i in mine[chunk : chunk + CHUNK]:
                trace_id = f"{run_id}:p{i}:0"
                traces.append(
                    to_row(
                        Trace(
                            trace_id,
                            run_id,
                            f"p{i}",
                            f"Prompt {i}: how do I fix my bike?",
                            f"category-{i % 12}",
                            0,
                            "bench-model",
                            "bench",
                            "v0",
                            float(i),
                        )
                    )
                )
                for round_ in range(5):
                    critique = None if round_ == 0 else f"Critique {round_} of answer {i}: it could say more."
                    steps.append(
                        to_row(
                            TraceStep(
                                trace_id,
                                round_,
                                None if round_ == 0 else "clarity",
                                critique,
                                f"Answer {i}, round {round_}: pump the tyre, check the chain.",
                                20,
                                10,
                                30,
                                0.5,
                            )
                        )
                    )
            job.append("traces", traces)
            job.append("trace_steps", steps)
        job.set_progress("done", len(mine) * 5, len(mine) * 5)


def add_labels(workspace, constitution_path: Path, labels: int, pairs: int, human: int) -> None:
    """PAIRS pairs in one pairs run, LABELS AI labels over them in LABELS/PAIRS label runs (one principle each),
    and HUMAN people's labels from three annotators, imported as `cai import-labels` does."""
    constitution = load_constitution(constitution_path)
    principles = [p.id for p in constitution.enabled_principles]
    pairs_job = JobFolder.create(workspace.runs_dir, "bench-pairs", {"kind": "pairs", "model": "bench-model"})
    for chunk in range(0, pairs, CHUNK):
        pairs_job.append(
            "pairs",
            [
                to_row(
                    Pair(
                        f"bench-pair-{i}",
                        f"Question {i}: how do I keep plant {i} alive?",
                        f"Water plant {i} weekly.",
                        f"Leave plant {i} alone.",
                        "sampled",
                        "bench-run",
                        i,
                        "0",
                        "1",
                    )
                )
                for i in range(chunk, min(pairs, chunk + CHUNK))
            ],
        )
    pairs_job.set_progress("done", pairs, pairs)
    for r in range(max(1, labels // pairs)):
        run_id = f"bench-labels-{r:02d}"
        job = JobFolder.create(
            workspace.runs_dir,
            run_id,
            {"kind": "label", "model": "bench-judge", "config": {}, "constitution": constitution.snapshot()},
        )
        principle = principles[r % len(principles)]
        for chunk in range(0, pairs, CHUNK):
            rows = []
            for i in range(chunk, min(pairs, chunk + CHUNK)):
                p1, p2 = ((i * 7 + r) % 97) / 97 * 0.9 + 0.05, ((i * 13 + r) % 89) / 89 * 0.9 + 0.05
                rows.append(
                    to_row(
                        logprob_label(run_id, f"bench-pair-{i}", principle, "bench-judge", constitution.version, p1, p2)
                    )
                )
            job.append("ai_labels", rows)
        job.set_progress("done", pairs, pairs)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
        choices = ("a", "b", "tie", "both_bad")
        store.import_human_labels(
            [
                HumanLabel(f"bench-pair-{i // 3}", f"person-{i % 3}", choices[i % 4], bool(i % 2), "", 0.0, 0.0)
                for i in range(human)
            ]
        )


def add_runs(runs_dir: Path, total: int) -> None:
    """Finished job folders of the kinds the pages list, until RUNS_DIR holds TOTAL."""
    configs = {  # what each kind's card reads of its config
        "generate": {},
        "label": {"strategy": "sample"},
        "eval": {},
        "export": {"kind": "pairs", "out": "exports/pairs.jsonl"},
        "pairs": {"k": 2},
        "calibrate": {"label_run": "bench-labels-00"},
    }
    kinds = list(configs)
    present = len(list(runs_dir.iterdir()))
    for i in range(max(0, total - present)):
        kind = kinds[i % len(kinds)]
        spec = {"kind": kind, "model": "bench-model", "config": configs[kind]}
        job = JobFolder.create(runs_dir, f"bench-{kind}-{i:03d}", spec)
        job.set_progress("done", 1, 1)


def seed(folder: Path, args) -> Workspace:
    """The browser tests' seed in FOLDER, plus what ARGS ask for, ingested."""
    workspace = seeded_data(folder)
    seed_pairs(workspace, folder / "constitutions" / "hhh.yaml")
    add_traces(workspace.runs_dir, args.traces, args.trace_runs)
    if args.labels:
        add_labels(workspace, folder / "constitutions" / "hhh.yaml", args.labels, args.pairs, args.human)
    add_runs(workspace.runs_dir, args.runs)
    with Store.open(workspace) as store:
        store.ingest(workspace.runs_dir)
    return workspace


def share_compiled_scripts() -> None:
    """AppTest compiles the scripts again on every run (a fresh ScriptCache each time); the server compiles each
    once. One cache for every run here, so that a redraw costs what it costs on the server."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    shared = ScriptCache()
    # both make their own: the runner for the main script, AppTest (its pages manager) for the page it runs
    local_script_runner.ScriptCache = app_test.ScriptCache = lambda: shared


def time_page(page: str | None, repeats: int) -> tuple[float, list[float], list[float]]:
    """Seconds to open the page (None: the home page, app.py), and each redraw's wall and CPU seconds."""
    from streamlit.testing.v1 import AppTest

    began = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    if page:
        at.switch_page(page).run()
    first = time.perf_counter() - began
    if at.exception:
        raise RuntimeError(f"{page or 'app.py'} failed: {at.exception[0].value}")
    redraws, cpu = [], []
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        at.run()
        redraws.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return first, redraws, cpu


def use_workspace(workspace: Workspace) -> None:
    os.environ.update(
        CAI_DATA_DIR=str(workspace.root), CAI_CONSTITUTIONS_DIR=str(workspace.root.parent / "constitutions")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Redraws timed per page.")
    parser.add_argument("--traces", type=int, default=0, help="Synthetic four-round traces added to the seed.")
    parser.add_argument("--pages", nargs="*", help="Only the pages whose file name holds one of these words.")
    parser.add_argument("--at-scale", action="store_true", help="Issue 22's size, timed beside the small seed.")
    parser.add_argument("--labels", type=int, help="AI labels (with --at-scale; 1,000,000 by default).")
    parser.add_argument("--pairs", type=int, help="Pairs they label (with --at-scale; 250,000 by default).")
    parser.add_argument("--human", type=int, help="People's labels (with --at-scale; 6,000 by default).")
    parser.add_argument("--runs", type=int, help="Job folders in all (with --at-scale; 200 by default).")
    parser.add_argument("--keep", type=Path, help="Seed the large workspace here, or reuse it if it is there.")
    args = parser.parse_args()

    small = argparse.Namespace(traces=args.traces, trace_runs=1, labels=0, pairs=0, human=0, runs=0)
    sizes = {"seed": seed(Path(tempfile.mkdtemp(prefix="bench-pages-")), small)}
    if args.at_scale:
        large = argparse.Namespace(
            traces=args.traces or 100_000,
            trace_runs=20,
            labels=args.labels or 1_000_000,
            pairs=args.pairs or 250_000,
            human=args.human or 6_000,
            runs=args.runs or 200,
        )
        folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-pages-large-"))
        if (folder / "data").exists():
            sizes["large"] = Workspace(folder / "data")
        else:
            began = time.perf_counter()
            sizes["large"] = seed(folder, large)
            print(f"seeded {vars(large)} in {time.perf_counter() - began:.0f} s ({folder})")
        with Store.open(sizes["large"]) as store:
            counts = store.counts()
        print("large:", counts)
    os.environ.pop("CAI_DB", None)
    os.chdir(ROOT)
    share_compiled_scripts()

    pages = [None] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))
    if args.pages:
        pages = [p for p in pages if p and any(word.lower() in p.lower() for word in args.pages)]
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    # CPU seconds as well as wall seconds: on a machine shared with other work the wall time measures the others too
    print(
        f"{'page':<16} {'size':<6} {'open s':>7} {'redraw s (median)':>18} {'max':>6} {'CPU s':>6} "
        f"{'x seed':>7}  under {TARGET} s?"
    )
    for page in pages:
        name = Path(page).stem if page else "Home (app.py)"
        base = None
        for size, workspace in sizes.items():
            use_workspace(workspace)
            first, redraws, cpu = time_page(page, args.repeats)
            median = statistics.median(redraws)
            base = base or median
            print(
                f"{name:<16} {size:<6} {first:7.2f} {median:18.3f} {max(redraws):6.2f} {statistics.median(cpu):6.3f} "
                f"{median / base:7.1f}  {'yes' if median < TARGET else 'NO'}",
                flush=True,
            )
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
