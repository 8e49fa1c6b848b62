"""The redraw time of every page on seeded data, against issue 13's target of under 0.5 s a redraw.

    python benchmarks/bench_pages.py [--repeats 5] [--traces 0] [--pages Traces Evaluate]

Each page runs under Streamlit's AppTest (the script as the server runs it, without a browser): once to open it
(a first draw also imports what the page needs), then REPEATS redraws with nothing changed, as a click on a
widget that changes nothing costs. The data is the browser tests' seed (a four-round trace, a hostile one, 30
pairs with an AI label run) plus TRACES synthetic traces of four rounds each, in a fresh folder.

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

from cai_core.jobs import JobFolder  # noqa: E402
from cai_core.records import Trace, TraceStep, to_row  # noqa: E402
from tests.browser.seed import seed_pairs, seeded_data  # noqa: E402

TARGET = 0.5  # seconds a redraw, issue 13 item 8


def add_traces(runs_dir: Path, n: int) -> None:
    """N finished four-round traces in one run, spooled as a generation job writes them."""
    job = JobFolder.create(runs_dir, "bench-run", {"kind": "generate", "model": "bench-model", "config": {}})
    traces, steps = [], []
    for i in range(n):
        trace_id = f"bench-run:p{i}:0"
        traces.append(
            to_row(
                Trace(
                    trace_id,
                    "bench-run",
                    f"p{i}",
                    f"Prompt {i}: how do I fix my bike?",
                    "",
                    0,
                    "bench-model",
                    "bench",
                    "v0",
                    float(i),
                )
            )
        )
        for round_ in range(5):
            critique = None if round_ == 0 else f"Critique {round_} of answer {i}: it could say more about tyres."
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
    job.set_progress("done", len(steps), len(steps))


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
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Redraws timed per page.")
    parser.add_argument("--traces", type=int, default=0, help="Synthetic four-round traces added to the seed.")
    parser.add_argument("--pages", nargs="*", help="Only the pages whose file name holds one of these words.")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    workspace = seeded_data(folder)
    seed_pairs(workspace, folder / "constitutions" / "hhh.yaml")
    add_traces(workspace.runs_dir, args.traces)
    os.environ.update(CAI_DATA_DIR=str(workspace.root), CAI_CONSTITUTIONS_DIR=str(folder / "constitutions"))
    os.environ.pop("CAI_DB", None)
    os.chdir(ROOT)
    share_compiled_scripts()

    pages = [None] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))
    if args.pages:
        pages = [p for p in pages if p and any(word.lower() in p.lower() for word in args.pages)]
    # CPU seconds as well as wall seconds: on a machine shared with other work the wall time measures the others too
    print(f"{'page':<16} {'open s':>7} {'redraw s (median)':>18} {'max':>6} {'CPU s':>6}  under {TARGET} s?")
    for page in pages:
        name = Path(page).stem if page else "Home (app.py)"
        first, redraws, cpu = time_page(page, args.repeats)
        median = statistics.median(redraws)
        print(
            f"{name:<16} {first:7.2f} {median:18.3f} {max(redraws):6.2f} {statistics.median(cpu):6.3f}  "
            f"{'yes' if median < TARGET else 'NO'}"
        )


if __name__ == "__main__":
    main()
