"""AI feedback (RLAIF): a judge model's soft preference labels for response pairs (Bai et al. 2022, section 4).

The judge is asked a multiple-choice question (the principle's preference question, options (A) and (B)),
and its preference is read from the log-probabilities of the option letters: P(A) is the softmax of
log P("A") and log P("B") as the first token of its reply. No free text is parsed. Each pair is asked
in both orders, because small judges favour a position; both per-order probabilities are kept, and
the label is their average in pair terms:

    p_order1 = P("A" | response_a shown as (A))          = P(a better), as order 1 sees it
    p_order2 = P("A" | response_b shown as (A))          = P(b better), as order 2 sees it
    p_a      = (p_order1 + (1 - p_order2)) / 2

With chain-of-thought the judge first writes its reasoning (one batched generation), then the options
are scored after it, and p_a is clamped to a band (0.4-0.6 in the paper: reasoning makes the letter
probabilities overconfident). Endpoints that return no log-probabilities get a strict-format fallback:
the judge must reply with exactly "A" or "B"; anything else is recorded as a failure, never guessed.

A labelling run is a job like SL-CAI generation: its pairs are copied into its folder when it is
prepared (the job itself never opens the database), its labels are spooled to `ai_labels.jsonl`, and
rerunning the same configuration resumes it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from .backends import DEFAULT_MODEL, Backend, BackendError, Chat, SamplingParams, load_backend
from .config import CheckedConfig
from .constitution import Constitution, Principle, load_constitution, parse_constitution
from .jobs import JobFolder, JobKind, KeySet, Plan, engine_name, in_flight_for, progress_batch_size
from .judge_calibration import JudgeCalibration, PlattScaling
from .judge_verdict import PositionMonitor
from .records import AILabel, Pair, to_row
from .tracking import TrackerChoice, record_input_runs, record_warning, tracker_field
from .workspace import Workspace

OPTIONS = ("A", "B")
ANSWER_INSTRUCTION = "Answer with the letter of the better option only."
COT_INSTRUCTION = "Think step by step about which response is better and why, in a few sentences."
COT_ANSWER_REQUEST = "So which response is better? " + ANSWER_INSTRUCTION
STRICT_INSTRUCTION = 'Reply with exactly one letter, "A" or "B", and nothing else.'
INPUT = "input_pairs"  # the job's input file (see JobFolder.write_input)
CALIBRATION_INPUT = "input_calibration"  # the calibration a run labels through, copied in (the job opens no store)


def conversation_text(prompt: str) -> str:
    """A pair's prompt as a transcript: hh-rlhf prompts already are one, a single request becomes one."""
    prompt = prompt.strip()
    return prompt if prompt.startswith("Human:") else f"Human: {prompt}"


def comparison_chat(
    principle: Principle,
    prompt: str,
    response_a: str,
    response_b: str,
    *,
    instruction: str = ANSWER_INSTRUCTION,
) -> Chat:
    """A multiple-choice question whose answer is a single option letter, so that the judge's
    preference can be read from the log-probabilities of "A" and "B" without parsing free text."""
    return [
        {
            "role": "user",
            "content": (
                "Consider the following conversation between a human and an assistant.\n\n"
                f"{conversation_text(prompt)}\n\n"
                f"{principle.preference_question}\n"
                f"(A) {response_a}\n"
                f"(B) {response_b}\n\n"
                f"{instruction}"
            ),
        },
    ]


def few_shot_chat(constitution: Constitution, principle: Principle, count: int) -> Chat:
    """Worked comparisons from the constitution's examples: the revision is the better response. The
    better one alternates between (A) and (B) so that the examples teach no position."""
    if count > len(constitution.few_shot_examples):
        raise ValueError(
            f"few-shot {count}: constitution {constitution.name!r} has only "
            f"{len(constitution.few_shot_examples)} worked example(s)"
        )
    chat: Chat = []
    for i, ex in enumerate(constitution.few_shot_examples[:count]):
        better_first = i % 2 == 0
        a, b = (ex.revision, ex.response) if better_first else (ex.response, ex.revision)
        chat += comparison_chat(principle, ex.prompt, a, b)
        chat.append({"role": "assistant", "content": "A" if better_first else "B"})
    return chat


def choose_principle(constitution: Constitution, seed: int, pair_id: str) -> Principle:
    """One principle per pair (Bai et al.), seeded by the pair: a resumed job picks what the killed one would."""
    return random.Random(f"{seed}:{pair_id}").choice(constitution.enabled_principles)


def soft_label(logprob_a: float, logprob_b: float) -> float | None:
    """P(A) among the two options; None when neither option had any probability (a server's top-k missed both)."""
    top = max(logprob_a, logprob_b)
    if top == -math.inf:
        return None
    ea, eb = math.exp(logprob_a - top), math.exp(logprob_b - top)
    return ea / (ea + eb)


def combine_orders(p_order1: float | None, p_order2: float | None, band: tuple[float, float] | None) -> float | None:
    if p_order1 is None or p_order2 is None:
        return None
    p_a = (p_order1 + 1.0 - p_order2) / 2.0
    return min(max(p_a, band[0]), band[1]) if band else p_a


def parse_strict(text: str) -> float | None:
    """P(A) from a strict-format reply: 1 for exactly "A", 0 for exactly "B", None for anything else."""
    return {"A": 1.0, "B": 0.0}.get(text.strip())


@dataclass(frozen=True)
class Verdict:
    """What the judge said about one (pair, principle): the per-order probabilities and their combination."""

    p_order1: float | None
    p_order2: float | None
    p_a: float | None
    method: str
    reasoning_1: str | None = None
    reasoning_2: str | None = None

    @property
    def failed(self) -> bool:
        return self.p_a is None


def check_settings(constitution: Constitution, few_shot: int, cot_band: tuple[float, float]) -> None:
    """Refuse settings that would only fail later, inside a job."""
    if not 0.0 <= cot_band[0] <= 0.5 <= cot_band[1] <= 1.0:
        raise ValueError(f"chain-of-thought band {cot_band}: expected low <= 0.5 <= high within [0, 1]")
    if few_shot < 0:
        raise ValueError(f"few-shot {few_shot}: expected 0 or more")
    few_shot_chat(constitution, constitution.enabled_principles[0], few_shot)


COT_BAND = (0.4, 0.6)  # with chain-of-thought, P(a better) is clamped to this band unless set


class Judge:
    """Labels (pair, principle) items in batches: every order of every item in one call per stage."""

    def __init__(
        self,
        backend: Backend,
        constitution: Constitution,
        *,
        method: Literal["auto", "logprob", "strict"] = "auto",
        cot: bool = False,
        cot_tokens: int = 128,
        cot_band: tuple[float, float] = COT_BAND,
        few_shot: int = 0,
    ):
        check_settings(constitution, few_shot, cot_band)
        self.backend = backend
        self.constitution = constitution
        self.method = method
        self.cot = cot
        self.cot_tokens = cot_tokens
        self.cot_band = cot_band
        self.few_shot = few_shot

    @classmethod
    def from_label_settings(cls, backend: Backend, constitution: Constitution, settings: dict) -> Judge:
        """The judge a label run's settings describe (`LabelConfig`'s fields, as its run.json records them): the
        label job's own, and the one a calibration of that run asks again. What the record lacks keeps its default."""
        options = {name: settings[name] for name in ("method", "cot", "cot_tokens", "few_shot") if name in settings}
        cot_band = (settings.get("cot_min", COT_BAND[0]), settings.get("cot_max", COT_BAND[1]))
        return cls(backend, constitution, cot_band=cot_band, **options)

    def chats(self, pair: Pair, principle: Principle, instruction: str) -> tuple[Chat, Chat]:
        """The question in order 1 (response_a as (A)) and order 2 (response_b as (A))."""
        examples = few_shot_chat(self.constitution, principle, self.few_shot)
        a_first = comparison_chat(principle, pair.prompt, pair.response_a, pair.response_b, instruction=instruction)
        b_first = comparison_chat(principle, pair.prompt, pair.response_b, pair.response_a, instruction=instruction)
        return examples + a_first, examples + b_first

    def label(self, items: list[tuple[Pair, Principle]]) -> list[Verdict]:
        if not items:
            return []
        reasoning: list[str | None] = [None] * (2 * len(items))
        if self.cot:
            thinking = [c for pair, p in items for c in self.chats(pair, p, COT_INSTRUCTION)]
            greedy = SamplingParams(max_new_tokens=self.cot_tokens, temperature=0.0)
            reasoning = [g.text for g in self.backend.generate(thinking, greedy)]
        probabilities, method = self._ask(items, reasoning)
        band = self.cot_band if self.cot else None
        return [
            Verdict(p1, p2, combine_orders(p1, p2, band), method, reasoning[2 * i], reasoning[2 * i + 1])
            for i, (p1, p2) in enumerate(zip(probabilities[0::2], probabilities[1::2], strict=True))
        ]

    def _ask(self, items, reasoning: list[str | None]) -> tuple[list[float | None], str]:
        if self.method != "strict":
            chats = self._final_chats(items, reasoning, ANSWER_INSTRUCTION, COT_ANSWER_REQUEST)
            try:
                return [soft_label(*lp) for lp in self.backend.score_options(chats, list(OPTIONS))], "logprob"
            except BackendError:
                if self.method == "logprob":
                    raise
                self.method = "strict"  # the endpoint gives no log-probabilities: stop asking for them
        chats = self._final_chats(items, reasoning, STRICT_INSTRUCTION, STRICT_INSTRUCTION)
        replies = self.backend.generate(chats, SamplingParams(max_new_tokens=4, temperature=0.0))
        return [parse_strict(r.text) for r in replies], "strict"

    def _final_chats(self, items, reasoning, instruction: str, after_reasoning: str) -> list[Chat]:
        if not self.cot:
            return [c for pair, p in items for c in self.chats(pair, p, instruction)]
        thinking = [c for pair, p in items for c in self.chats(pair, p, COT_INSTRUCTION)]
        return [
            [*chat, {"role": "assistant", "content": text}, {"role": "user", "content": after_reasoning}]
            for chat, text in zip(thinking, reasoning, strict=True)
        ]


# --- the labelling job ---------------------------------------------------------------------------


@dataclass
class LabelConfig(CheckedConfig):
    constitution: str = field(metadata={"help": "Path of the constitution YAML (its preference questions)."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Judge model spec.", "model_spec": True})
    strategy: Literal["sample", "ensemble"] = field(
        default="sample",
        metadata={"help": "sample: one seeded principle per pair (Bai et al.); ensemble: mean over all enabled."},
    )
    method: Literal["auto", "logprob", "strict"] = field(
        default="auto",
        metadata={"help": "logprob: option log-probabilities; strict: a generated letter; auto: strict if none."},
    )
    cot: bool = field(default=False, metadata={"help": "Let the judge reason before the options are scored."})
    cot_tokens: int = field(default=128, metadata={"help": "Most tokens of chain-of-thought reasoning.", "min": 1})
    cot_min: float = field(default=COT_BAND[0], metadata={"help": "With --cot, clamp P(a better) to at least this."})
    cot_max: float = field(default=COT_BAND[1], metadata={"help": "With --cot, clamp P(a better) to at most this."})
    few_shot: int = field(default=0, metadata={"help": "Worked comparisons shown first (from the constitution)."})
    source: Literal["sampled", "sl-cai", "import"] | None = field(
        default=None, metadata={"help": "Label only pairs from this source; all pairs when unset."}
    )
    limit: int | None = field(default=None, metadata={"help": "Label only the first N pairs.", "min": 1})
    batch_size: int = field(
        default=32, metadata={"help": "Pairs per batch (both orders of each go together).", "min": 1}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the principle each pair is judged under."})
    calibration: str | None = field(
        default=None,
        metadata={
            "help": "A stored calibration (`cai calibrate`) of this judge and constitution: each label then keeps "
            "its calibrated P(a better) beside the raw one, and exports and training read the calibrated one.",
            "text": True,
        },
    )
    tracker: TrackerChoice = tracker_field()
    run_id: str | None = field(
        default=None, metadata={"help": "Name of the run; by default a hash of everything above, so rerunning resumes."}
    )


def _plan(config: LabelConfig, workspace: Workspace, pairs: list[Pair] | None = None, store=None) -> Plan:
    """The pairs to label (from the store unless given) and the calibration named, copied into the job: the
    background job reads them from there. `store`: an open store to read them from (one is opened if needed)."""
    constitution = load_constitution(config.constitution)
    check_settings(constitution, config.few_shot, (config.cot_min, config.cot_max))
    if store is None and (pairs is None or config.calibration):
        from .store import Store

        with Store.open(workspace) as opened:
            opened.ingest(workspace.runs_dir)
            return _plan(config, workspace, pairs, opened)
    if pairs is None:
        pairs = store.pairs(source=config.source, limit=config.limit)
    if not pairs:
        raise ValueError("no pairs to label: make or import some first (Data page, `cai pairs`, `cai import-labels`)")
    inputs = {INPUT: [to_row(p) for p in pairs]}
    if config.calibration:
        inputs[CALIBRATION_INPUT] = [_calibration_row(store, config.calibration, constitution)]
    origins = {pair.origin for pair in pairs}  # the runs (or files) the pairs came from: the labels' lineage
    return Plan(
        config.model, constitution=constitution, inputs=inputs, then=lambda job: record_input_runs(job, origins)
    )


def _calibration_row(store, calibration_id: str, constitution: Constitution) -> dict:
    """The stored calibration as the job applies it; refused where it was fitted under another version of the
    constitution (its priors are per principle of that version)."""
    found = store.calibrations()
    found = found[found.calibration_id == calibration_id]
    if found.empty:
        raise ValueError(f"calibration {calibration_id!r}: no such calibration (`cai calibrate --list` lists them)")
    row = found.iloc[0]
    if row.constitution_version != constitution.version:
        raise ValueError(
            f"calibration {calibration_id!r} was fitted under constitution version {row.constitution_version}, not "
            f"{constitution.version} ({constitution.name}): calibrate a run of this version"
        )
    priors = {p: list(pair) for p, pair in row.priors.items()}
    return {"calibration_id": calibration_id, "slope": row.slope, "bias": row.bias, "priors": priors}


def _read_calibration(job: JobFolder) -> tuple[str, JudgeCalibration] | None:
    if not job.has_input(CALIBRATION_INPUT):
        return None
    [row] = job.read_input(CALIBRATION_INPUT)
    priors = {p: tuple(pair) for p, pair in row["priors"].items()}
    return row["calibration_id"], JudgeCalibration(priors, PlattScaling(row["slope"], row["bias"]), {})


class LabelWork:
    """The pairs copied into the job, judged `batch_size` (pair, principle) items at a time; `done` counts labels.
    A `jobs.PipelinedWork`: on a fleet several batches are judged at once. The pairs are read from the job's input
    a window at a time and what is labelled is known by a `KeySet`, so that a million pairs are never held at once."""

    unit = "label"
    WINDOW_BATCHES = 16  # batches' worth of pairs read at once and sorted by length among themselves

    def __init__(self, job: JobFolder, config: LabelConfig, workspace: Workspace, backend: Backend | None = None):
        self.job, self.config, self.workspace, self.backend = job, config, workspace, backend
        self.engine = ""
        self.judge: Judge | None = None
        # The constitution as it was when the run was prepared: the file may have been edited since.
        self.constitution = parse_constitution(job.spec["constitution"]["content"], f"run {job.run_id}")
        per_pair = len(self.constitution.enabled_principles) if config.strategy == "ensemble" else 1
        self._total = job.input_length(INPUT) * per_pair
        self.monitor = PositionMonitor()
        labelled = self._counted(job.records("ai_labels"))
        self.labelled = KeySet(_label_key(row["pair_id"], row["principle_id"]) for row in labelled)
        self.monitor.warned = self.monitor.warning()  # what the job recorded before it stopped
        self._done = len(self.labelled)
        self.calibration = _read_calibration(job)

    def _counted(self, rows):
        """The rows, each counted by the position monitor on the way (one pass over what a resumed job labelled)."""
        for row in rows:
            self.monitor.add(row["p_order1"], row["p_order2"])
            yield row

    def total(self) -> int:
        return self._total

    def done(self) -> int:
        return self._done

    def _items(self):
        for row in self.job.input_rows(INPUT):
            pair = Pair(**row)
            if self.config.strategy == "ensemble":
                for principle in self.constitution.enabled_principles:
                    yield pair, principle
            else:
                yield pair, choose_principle(self.constitution, self.config.seed, pair.pair_id)

    def batches(self):
        # judgments are greedy: batching changes no label
        size = progress_batch_size(self.total() - self.done(), self.config.batch_size)
        window: list[tuple[Pair, Principle]] = []
        for pair, principle in self._items():
            if _label_key(pair.pair_id, principle.id) not in self.labelled:
                window.append((pair, principle))
            if len(window) == self.WINDOW_BATCHES * size:
                yield from self._cut(window, size)
                window = []
        yield from self._cut(window, size)

    @staticmethod
    def _cut(window: list[tuple[Pair, Principle]], size: int):
        # batches of similar length waste little on padding; labels are keyed by pair, so order is free
        window.sort(key=lambda item: len(item[0].prompt) + len(item[0].response_a) + len(item[0].response_b))
        for start in range(0, len(window), size):
            yield window[start : start + size]

    def in_flight(self) -> int:
        if self.judge is None:
            self.backend = self.backend or load_backend(self.config.model, self.workspace)
            self.job.record_engines(judge=self.backend)
            self.engine = engine_name(self.backend)
            self.judge = Judge.from_label_settings(self.backend, self.constitution, asdict(self.config))
        return in_flight_for(self.backend, 2 * self.config.batch_size)  # both orders of each pair

    def run(self, batch: list[tuple[Pair, Principle]], count):
        config = self.config
        began = time.perf_counter()
        verdicts = self.judge.label(batch)
        seconds = (time.perf_counter() - began) / len(batch)
        calibrated = self._calibrated(batch, verdicts)
        version = self.constitution.version  # a hash of the whole constitution: once a batch, not once a label
        labels = [
            AILabel(
                run_id=self.job.run_id,
                pair_id=pair.pair_id,
                principle_id=principle.id,
                judge_model=self.backend.name,
                constitution_version=version,
                strategy=config.strategy,
                method=v.method,
                cot=config.cot,
                few_shot=config.few_shot,
                p_order1=v.p_order1,
                p_order2=v.p_order2,
                p_a=v.p_a,
                failed=v.failed,
                reasoning_1=v.reasoning_1,
                reasoning_2=v.reasoning_2,
                seconds=seconds,
                p_a_calibrated=p_calibrated,
                calibration_id=self.calibration and self.calibration[0],
            )
            for (pair, principle), v, p_calibrated in zip(batch, verdicts, calibrated, strict=True)
        ]
        yield [to_row(label) for label in labels]

    def store(self, rows: list[dict]) -> None:
        self.job.append("ai_labels", rows)
        self._done += len(rows)
        if (warning := self.monitor.count(rows)) is not None:
            record_warning(self.job, warning)  # the job's tracker notes it with its next numbers

    def _calibrated(self, batch, verdicts: list[Verdict]) -> list[float | None]:
        """Each verdict's P(a better) read through the run's calibration (None without one, or where it failed):
        both orders recalibrated, then recombined as `combine_orders` does (a chain-of-thought band is not applied
        again: the calibration was fitted on the banded labels' per-order probabilities)."""
        if self.calibration is None:
            return [None] * len(verdicts)
        judged = [i for i, v in enumerate(verdicts) if not v.failed]
        out: list[float | None] = [None] * len(verdicts)
        if judged:
            p1 = np.array([verdicts[i].p_order1 for i in judged])
            p2 = np.array([verdicts[i].p_order2 for i in judged])
            c1, c2 = self.calibration[1].apply(p1, p2, [batch[i][1].id for i in judged])
            for i, q1, q2 in zip(judged, c1, c2, strict=True):
                out[i] = float(combine_orders(q1, q2, None))
        return out


def _label_key(pair_id: str, principle_id: str) -> str:
    return f"{pair_id}\0{principle_id}"


LABEL = JobKind("label", LabelConfig, _plan, LabelWork, "AI labels", input=INPUT, sources=("pairs", "store"))
