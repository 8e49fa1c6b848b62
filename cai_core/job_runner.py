"""The one runner of every non-training job: `run_job` drives a job module's `Work` over its folder.

A job module gives the runner only a `Work` (its state read back from the folder, its batches and a `step`), and
the runner owns the rest: the lock, a cancel made before the start, the repair of torn records, progress with a
rate and an ETA, the cancel check between batches and between model calls, and the closing status. A staged job
(the recipe, the constitution A/B) is a `StagedWork`, whose batches are whole jobs. Training keeps its own loop
(`train/launch.py`, driven by the trainers' callbacks) over the same folder.

A work whose model calls go to a fleet of servers is a `PipelinedWork`: it splits `step` into `run` (the model
calls, which yield records as they are ready) and `store`, and the runner keeps `in_flight()` batches running at
once, each in a thread of its own, while it stores what they yield in this thread, in the order it comes. A fleet
then never waits for one batch's slowest request; a kill loses only what was not yet stored, as before.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Protocol

from .job_folder import Cancelled, JobFolder, Pace
from .records import now
from .tracking import open_tracker


@contextmanager
def ending_on_failure(report: Callable[[str, str], object]) -> Iterator[None]:
    """Let an exception that ends a job write its last status (failed; cancelled for Ctrl-C) with the reason,
    then go on: the job folder says why it stopped, and the caller still sees the error."""
    try:
        yield
    except BaseException as exc:
        report("cancelled" if isinstance(exc, KeyboardInterrupt) else "failed", f"{type(exc).__name__}: {exc}")
        raise


class Work(Protocol):
    """What a job module gives the runner: its state, read back from the job's folder when it is built, and
    its work cut into batches. `step` does one batch and spools its records; a batch cut short by a kill is
    done again on resume, so no batch may leave half its records behind without the other half being derivable.
    Between model calls inside a batch, `step` may call `folder.stop_if_cancelled()`."""

    unit: str  # what done and total count
    engine: str  # "BACKEND · MODEL" once a backend is loaded; "" before

    def total(self) -> int: ...

    def done(self) -> int: ...

    def batches(self) -> Iterable: ...

    def step(self, batch) -> None: ...


class PipelinedWork(Work, Protocol):
    """A `Work` whose batches may run several at once (see the module's doc). `in_flight` is asked once, before the
    first batch (it may load the model first); 1 runs each batch in the runner's thread as `step` would, which an
    in-process engine needs. `run(batch, count)` makes the batch's model calls and yields what is ready to spool, in
    the order it must be spooled; it calls `count(units)` as model calls end (the progress shown meanwhile) and must
    not write to the folder. `store(records)` spools them and counts them in `done`; only the runner calls it, one
    at a time. A batch cut short by a kill is run again on resume, so each yield must leave the folder whole."""

    def in_flight(self) -> int: ...

    def run(self, batch, count: Callable[[float], None]) -> Iterator: ...

    def store(self, records) -> None: ...


def in_flight_for(backend, requests_per_batch: int) -> int:
    """Batches to keep running at once on `backend`: one on an in-process engine; on a fleet (`slots`: requests it
    takes at once), enough to fill every slot twice over, and two more: batches that start together end their
    stages together, and while two of them wait for their slowest requests the rest keep the servers busy."""
    slots = getattr(backend, "slots", 0)
    if not slots:
        return 1
    return 2 + -(-2 * slots // max(1, requests_per_batch))


PROGRESS_STEPS = 10  # a job small enough to fit one batch still reports this many times before its end


def progress_batch_size(count: int, batch_size: int) -> int:
    """At most `batch_size`, and small enough that `count` items make at least `PROGRESS_STEPS` batches where there
    are that many: a job of 20 items with batches of 32 would otherwise show 0/20 until it ends. Only for work
    whose results do not depend on how it is batched."""
    return max(1, min(batch_size, -(-count // PROGRESS_STEPS)))


TICK_SECONDS = 2.0  # how often a running batch's own count, the elapsed time and the ETA are rewritten


class _Reporter:
    """Writes progress.json (and calls `on_progress`) with a rate and an ETA measured since this process began:
    at each batch's end, as pipelined batches' records are stored, and every TICK_SECONDS between (`ticking`),
    counting what running batches have finished and not yet stored."""

    def __init__(self, folder: JobFolder, on_progress: Callable[[int, int], None] | None):
        self.folder, self.on_progress = folder, on_progress
        self.work: Work | None = None
        self.last = folder.progress()
        self.pace = Pace(self.last.done)
        self.lock = threading.Lock()  # the batch's end and a tick write one at a time
        self.done_so_far = self.last.done  # work.done() at the last batch's end
        self.running = 0.0  # units that pipelined batches have counted and not yet stored

    def attach(self, work: Work) -> None:
        self.work, self.pace = work, Pace(work.done())

    def __call__(self, status: str = "running", message: str = "") -> None:
        with self.lock:
            if self.work:
                self.done_so_far = self.work.done()
            # while it runs, what other batches have finished counts too: progress never steps back
            self._write(status, message, self._shown() if status == "running" else self.done_so_far)

    def tick(self) -> None:
        with self.lock:
            self._write("running", "", self._shown())

    def stored(self, store: Callable[[], None], units: float) -> None:
        """Spool a pipelined batch's records (`store`) and move the `units` counted for them from running to
        done in one step, so that a tick between the two shows neither twice nor neither."""
        with self.lock:
            store()
            self.running -= units
            self.done_so_far = self.work.done()
            self._write("running", "", self._shown())

    def _shown(self) -> int:
        return min(self.done_so_far + int(self.running), self.work.total() if self.work else self.last.total)

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Tick in a thread while the batches run; stopped before the job's last status is written."""
        stop = threading.Event()

        interrupt = _interruptible()

        def run() -> None:
            while not stop.wait(TICK_SECONDS):
                if interrupt and self.folder.cancel_requested():
                    os.kill(os.getpid(), CANCEL_SIGNAL)  # see `_interruptible`
                    return
                # a full disk, say: the batch's own write at its end raises it where it counts
                with suppress(OSError):
                    self.tick()

        thread = threading.Thread(target=run, name=f"progress {self.folder.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _write(self, status: str, message: str, done: int) -> None:
        work = self.work
        total = work.total() if work else self.last.total
        unit, engine = (work.unit, work.engine) if work else (self.last.unit, self.last.engine)
        self.folder.set_progress(status, done, total, message, unit=unit, engine=engine, **self.pace.at(done, total))
        if self.on_progress:
            self.on_progress(done, total)


CANCEL_SIGNAL = signal.SIGUSR1
_cancel_armed = threading.local()


def _interruptible() -> bool:
    """Whether a cancel can interrupt this thread's job inside a step: only a job run on its process's main
    thread (`cai resume`, the job's own process), where `_cancel_interrupts` catches the signal."""
    return getattr(_cancel_armed, "on", False)


@contextmanager
def _cancel_interrupts() -> Iterator[None]:
    """A cancel is honoured inside a long step too (a model load, a batch of long generations), not only
    between batches: the progress tick signals the job's main thread, which raises Cancelled where it is.
    What the step had not spooled is done again on resume, as after a kill."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame) -> None:
        if _cancel_armed.on:  # a signal handled after the job left its steps is stale
            raise Cancelled

    previous = signal.signal(CANCEL_SIGNAL, on_signal)
    _cancel_armed.on = True
    try:
        yield
    finally:
        _cancel_armed.on = False
        signal.signal(CANCEL_SIGNAL, previous)


CANCELLED_BEFORE_START = "cancelled before it started; run it again to start it"
CANCELLED = "cancelled by request; run it again to resume"


def begin(folder: JobFolder) -> bool:
    """What every run of a job does first, holding the job's lock (training's runner too, whose loop is TRL's):
    a cancel made while the job was pending (launched, its process not yet running it) ends it cancelled where it
    stood, and False says so; an older cancel, made after it had stopped, is cleared (running it again means
    resuming it); records torn by a kill are repaired. True: go on and run it."""
    before = folder.recorded_progress()
    if before.status == "pending" and folder.cancel_requested():
        folder.set_progress("cancelled", before.done, before.total, CANCELLED_BEFORE_START, unit=before.unit)
        folder.clear_cancel()
        return False
    if before.status != "pending":
        folder.clear_cancel()
    folder.repair()
    return True


def run_job(
    folder: JobFolder, make_work: Callable[[], Work], *, on_progress: Callable[[int, int], None] | None = None
) -> JobFolder:
    """Run (or resume) a prepared job to its end, a cancel or a failure; returns its folder.

    Raises JobBusy when another process is already working on the job. A failure is recorded as the run's
    status with its reason, then raised."""
    with folder.exclusive():
        if not begin(folder):
            return folder
        report = _Reporter(folder, on_progress)
        tracker, status = None, "failed"
        try:
            with ending_on_failure(report), _logging_to(folder):
                # a job whose config names a tracker reports there; the workspace is the runs folder's parent
                tracker = open_tracker(folder, folder.path.parent.parent)
                try:
                    with _cancel_interrupts(), report.ticking():
                        work = make_work()
                        report.attach(work)
                        report()
                        for _ in _work_through(work, folder, report):
                            report()
                            if tracker:
                                tracker.log(work.done(), {"done": work.done(), "total": work.total()})
                except Cancelled:
                    folder.clear_cancel()
                    report("cancelled", CANCELLED)
                    status = "cancelled"
                    return folder
                report("done")
                status = "done"
        finally:
            if tracker:
                tracker.finish(status)
    return folder


def _work_through(work: Work, folder: JobFolder, report: _Reporter) -> Iterator[None]:
    """Do every batch of `work`; yields after each batch ends (progress and the tracker are written then)."""
    if not hasattr(work, "run"):
        for batch in work.batches():
            folder.stop_if_cancelled()
            work.step(batch)
            yield
        return
    batches = iter(work.batches())
    first = next(batches, _BATCH_END)
    if first is _BATCH_END:
        return  # nothing left to do: no model is loaded for it
    batches = itertools.chain([first], batches)
    in_flight = work.in_flight()
    if in_flight <= 1:
        for batch in batches:
            folder.stop_if_cancelled()
            running = _RunningBatch(report)
            for records in work.run(batch, running.count):
                report.stored(lambda records=records: work.store(records), running.take())
            yield
        return
    yield from _pipeline(work, batches, folder, report, in_flight)


class _RunningBatch:
    """What one running batch has counted (`count`, from its model calls' threads) and not yet handed over with
    records to store (`take`)."""

    def __init__(self, report: _Reporter):
        self.report, self.lock, self.counted = report, threading.Lock(), 0.0

    def count(self, units: float) -> None:
        with self.lock, self.report.lock:
            self.counted += units
            self.report.running += units

    def take(self) -> float:
        with self.lock:
            units, self.counted = self.counted, 0.0
            return units


_BATCH_END = object()
WAIT_SECONDS = 0.5  # how often the runner looks for a cancel while its batches run


def _pipeline(
    work: PipelinedWork, batches: Iterator, folder: JobFolder, report: _Reporter, in_flight: int
) -> Iterator[None]:
    """Up to `in_flight` batches running at once, each in a daemon thread; their records are stored here, as they
    come. On a failure or a cancel the runner stops at once: batches still running store nothing more (only this
    thread stores), and their threads end with their model calls."""
    ready: queue.SimpleQueue = queue.SimpleQueue()  # (records or _BATCH_END, units, error) as batches yield

    def run(batch, running: _RunningBatch) -> None:
        try:
            for records in work.run(batch, running.count):
                ready.put((records, running.take(), None))
            ready.put((_BATCH_END, 0.0, None))
        except BaseException as exc:  # noqa: BLE001 - raised in the runner's thread, below
            ready.put((None, 0.0, exc))

    running, more = 0, True
    while True:
        while more and running < in_flight:
            folder.stop_if_cancelled()
            batch = next(batches, _BATCH_END)
            if batch is _BATCH_END:
                more = False
                break
            threading.Thread(target=run, args=(batch, _RunningBatch(report)), daemon=True).start()
            running += 1
        if not running:
            return
        try:
            records, units, error = ready.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            folder.stop_if_cancelled()
            continue
        if error is not None:
            raise error
        if records is _BATCH_END:
            running -= 1
            yield
        else:
            report.stored(lambda records=records: work.store(records), units)


@contextmanager
def _logging_to(folder: JobFolder) -> Iterator[None]:
    """What the library logs while the job runs (a model server's failed, stalled or rerouted requests) goes to
    the job's log, so that the run itself says what it met on the way, however it was started."""
    handler = logging.FileHandler(folder.path / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger(__package__)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def engine_name(backend) -> str:
    """How progress names the engine and model a job runs on: "vllm · SmolLM2-135M-Instruct"."""
    return f"{getattr(backend, 'engine', type(backend).__name__)} · {backend.name}"


class StageFailed(RuntimeError):
    """A stage of a staged job ended without finishing; the message names the stage, its run and its reason."""


class StagedWork:
    """Stages as the job runner sees them: a batch is one stage, itself an ordinary job (its folder, progress,
    cancel, log) run to its end in this process. Rerunning skips the stages whose jobs are done and resumes the
    one that stopped; a cancel of the staged job is passed on to the running stage; a stage that ends cancelled
    ends the whole job cancelled, one that fails ends it failed with the stage's reason. The recipe is one; the
    constitution A/B (`ab.py`) another. A subclass gives `stage_job`, `run_stage` and `stage_record` (the fields
    its spooled record of a finished stage adds)."""

    unit = "stage"
    engine = ""
    table = "stages"  # where each finished stage is recorded, in the staged job's own folder

    def __init__(self, job: JobFolder, stages: list, on_stage: Callable[[object, str], None] | None = None):
        self.job, self.stages, self.on_stage = job, stages, on_stage
        self.finished = {row["run_id"] for row in job.read(self.table) if row["status"] == "done"}
        self.running: JobFolder | None = None

    def stage_job(self, stage) -> JobFolder:
        raise NotImplementedError

    def run_stage(self, stage) -> JobFolder:
        raise NotImplementedError

    def stage_record(self, stage) -> dict:
        return {}

    def total(self) -> int:
        return len(self.stages)

    def done(self) -> int:
        return len(self.finished)

    def batches(self):
        for stage in self.stages:
            if self.stage_job(stage).run_id not in self.finished:
                yield stage

    def step(self, stage) -> None:
        stage_job = self.stage_job(stage)
        if is_done(stage_job):  # finished by a run that was killed before it could say so
            self.finished.add(stage_job.run_id)
            return
        if self.on_stage:
            self.on_stage(stage, "running")
        began = now()
        self.running = stage_job
        stop = threading.Event()
        threading.Thread(target=self.pass_on_cancel, args=(stop,), daemon=True).start()
        try:
            stage_job = self.run_stage(stage)
        finally:
            self.running = None
            stop.set()
        progress = stage_job.progress()
        row = self.stage_record(stage) | {"run_id": stage_job.run_id, "status": progress.status}
        self.job.append(self.table, [row | {"started_at": began, "ended_at": now()}])
        if self.on_stage:
            self.on_stage(stage, progress.status)
        if progress.status == "cancelled":
            raise Cancelled
        if progress.status != "done":
            raise StageFailed(f"{stage.name} ({stage_job.run_id}) {progress.status}: {progress.message}")
        self.finished.add(stage_job.run_id)

    def pass_on_cancel(self, stop: threading.Event) -> None:
        """Watch the job's cancel file and put one in the running stage's folder: the stage stops at its next
        batch boundary as it would on its own cancel, and keeps what it has done."""
        while not stop.wait(0.5):
            running = self.running
            # a stage's folder is made as it starts: until then there is nowhere to ask it to stop
            if running is not None and running.path.is_dir() and self.job.cancel_requested():
                running.request_cancel()


def is_done(job: JobFolder) -> bool:
    """Whether the job exists and has finished: a stage a killed run left done is not run again."""
    return (job.path / "run.json").exists() and job.progress().status == "done"
