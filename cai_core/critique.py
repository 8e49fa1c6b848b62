"""SL-CAI (Bai et al. 2022, section 3): answer, then critique and revise against sampled principles.

Work walks in chunks of traces; inside a chunk every round is one batched call per stage
(initial answers, critiques, revisions), never one prompt at a time. Each stage's records are
spooled before the next begins, so a killed job resumes at the stage it was in; on a server each
answer and revision is spooled as it comes (`backends.generate_each`), not when the stage's slowest
is in. On a fleet of servers, or the engine service, several chunks are in flight at once
(`jobs.PipelinedWork`).

Each round critiques the *latest* answer afresh (the conversation is prompt, answer, critique
request), rather than growing one long conversation over every round as the paper's samples do:
small models lose the thread in long contexts, and the trace still records every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

from .auth import require_operator
from .backends import DEFAULT_MODEL, Backend, Chat, Generation, SamplingParams, generate_each, load_backend, stream
from .config import CheckedConfig
from .constitution import Constitution, Principle, load_constitution
from .jobs import JobFolder, JobKind, KeySet, Plan, engine_name, in_flight_for
from .prompts import load_prompts
from .records import Trace, TraceStep, to_row
from .tracking import TrackerChoice, tracker_field
from .workspace import Workspace


@dataclass
class GenerateConfig(CheckedConfig):
    constitution: str = field(metadata={"help": "Path of the constitution YAML."})
    prompts: str = field(metadata={"help": "Prompt source: .jsonl/.csv/.txt, a datasets folder, or hf:NAME[:SPLIT]."})
    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Policy model spec (answers the prompts).", "model_spec": True}
    )
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "Local models' precision; auto: bf16 on a GPU, fp32 on a CPU."}
    )
    critic_model: str | None = field(
        default=None,
        metadata={"help": "Model that critiques and revises; the policy model when unset.", "model_spec": True},
    )
    rounds: int | None = field(
        default=None, metadata={"help": "Critique→revision rounds; constitution default.", "min": 0}
    )
    samples: int = field(default=1, metadata={"help": "Independent traces per prompt.", "min": 1})
    principle_sampling: Literal["random", "round_robin"] | None = field(
        default=None, metadata={"help": "How each round's principle is chosen; constitution default."}
    )
    few_shot: bool = field(default=True, metadata={"help": "Show the constitution's worked examples first."})
    early_stop: bool = field(default=True, metadata={"help": "End a trace when its critique asks for no change."})
    max_new_tokens: int = field(
        default=128, metadata={"help": "Most tokens per answer, critique or revision.", "min": 1}
    )
    min_new_tokens: int = field(
        default=0, metadata={"help": "At least this many tokens (benchmarks fix lengths).", "min": 0}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 is greedy.", "min": 0})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    seed: int = field(default=0, metadata={"help": "Seed for principle choice and sampling."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts.", "min": 1})
    chunk_size: int = field(default=64, metadata={"help": "Traces carried through all rounds together.", "min": 1})
    skip_bad_lines: bool = field(default=False, metadata={"help": "Skip bad prompt lines instead of stopping."})
    tracker: TrackerChoice = tracker_field()
    run_id: str | None = field(
        default=None, metadata={"help": "Name of the run; by default a hash of everything above, so rerunning resumes."}
    )

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_p, self.seed, self.min_new_tokens)


@dataclass
class _State:
    """Where one trace stands: its latest answer, its last round, and whether it has stopped."""

    trace: Trace
    index: int
    response: str
    round: int
    stopped: bool


def critique_chat(prompt: str, response: str, principle: Principle, constitution: Constitution, few_shot: bool) -> Chat:
    chat: Chat = []
    if few_shot:
        for ex in constitution.few_shot_examples:
            chat += [
                {"role": "user", "content": ex.prompt},
                {"role": "assistant", "content": ex.response},
                {"role": "user", "content": ex.critique_request},
                {"role": "assistant", "content": ex.critique},
                {"role": "user", "content": ex.revision_request},
                {"role": "assistant", "content": ex.revision},
            ]
    return chat + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": principle.critique_request},
    ]


def revision_chat(critique_chat_: Chat, critique: str, principle: Principle) -> Chat:
    return critique_chat_ + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision_request},
    ]


def choose_principle(
    constitution: Constitution, strategy: str, seed: int, trace_id: str, trace_index: int, round_: int
) -> Principle:
    """Deterministic in (seed, trace, round): a resumed job picks what the killed one would have."""
    enabled = constitution.enabled_principles
    if strategy == "round_robin":
        return enabled[(trace_index + round_ - 1) % len(enabled)]
    return random.Random(f"{seed}:{trace_id}:{round_}").choice(enabled)


def says_nothing_to_change(critique: str, stop_phrases: list[str]) -> bool:
    lowered = critique.lower()
    return any(phrase.lower() in lowered for phrase in stop_phrases)


TRY_IT_PARAMS = SamplingParams(max_new_tokens=128)


@dataclass(frozen=True)
class SingleRound:
    """One critique→revision, as the constitution page's "try it" shows it."""

    prompt: str
    response: str
    principle_id: str
    critique: str
    revision: str


def critique_once(
    backend: Backend,
    constitution: Constitution,
    principle_id: str,
    prompt: str,
    response: str | None = None,
    params: SamplingParams = TRY_IT_PARAMS,
    few_shot: bool = True,
    on_text: Callable[[str, str], None] | None = None,
) -> SingleRound:
    """Answer `prompt` (unless a response is given), then critique and revise it under one principle.

    `on_text(part, text so far)` is called as each part ("response", "critique", "revision") streams in, where
    the engine streams (`backends.stream`), so that a reader sees the words come instead of waiting minutes.
    Operators only (the Constitution page's try-it runs the model in the app's process)."""
    require_operator("run the model")
    principle = constitution.principle(principle_id)

    def answer(part: str, chat: Chat) -> str:
        text = ""
        for piece in stream(backend, chat, params):
            text += piece
            if on_text:
                on_text(part, text)
        return text

    if response is None:
        response = answer("response", [{"role": "user", "content": prompt}])
    chat = critique_chat(prompt, response, principle, constitution, few_shot)
    critique = answer("critique", chat)
    revision = answer("revision", revision_chat(chat, critique, principle))
    return SingleRound(prompt, response, principle.id, critique, revision)


def _prompt_set(config: GenerateConfig):
    return load_prompts(config.prompts, on_bad_line="skip" if config.skip_bad_lines else "stop", limit=config.limit)


def _plan(config: GenerateConfig, workspace: Workspace) -> Plan:
    constitution = load_constitution(config.constitution)
    return Plan(config.model, {"prompts": _prompt_set(config).digest}, constitution=constitution)


def fit_prompt(backend: Backend, prompt: str, chat_around: Callable[[str], Chat], new_tokens: int) -> str:
    """The prompt, cut at its end so that `chat_around(prompt)` and `new_tokens` generated after it fit in the
    model's context. A prompt longer than the context would otherwise cost memory and time quadratic in its
    length, then fail."""
    limit = backend.context_length
    if limit is None:
        return prompt
    overhead = backend.count_tokens(chat_around(""))
    budget = limit - new_tokens - overhead
    if budget < 1:
        raise ValueError(
            f"max_new_tokens {new_tokens} leaves no room for a prompt in {backend.name}'s context of {limit} tokens"
        )
    text = prompt
    while (used := backend.count_tokens(chat_around(text)) - overhead) > budget:
        text = text[: int(len(text) * budget / used * 0.95)]
    return text


class GenerateWork:
    """SL-CAI as the job runner sees it (a `jobs.PipelinedWork`): a batch is one chunk of traces carried through
    all its rounds, each stage's records (the initial answers, then each critique→revision round) handed to the
    runner to spool before the next stage begins; `done` counts trace steps. On a fleet several chunks run at once.

    What is done is read back from the spool without holding it: the traces that have finished (16 bytes each, a
    `KeySet`), and the last step of each trace a kill left part way."""

    unit = "step"

    def __init__(self, job: JobFolder, config: GenerateConfig, workspace: Workspace, backends=None):
        self.job, self.config, self.workspace = job, config, workspace
        self.engine = ""
        self._backends = backends
        self.constitution = load_constitution(config.constitution)
        generation = self.constitution.generation
        self.rounds = config.rounds or generation.rounds
        self.strategy = config.principle_sampling or generation.principle_sampling
        self.stop_phrases = generation.stop_phrases if config.early_stop else []
        self.prompts = _prompt_set(config).prompts
        self.items = len(self.prompts) * config.samples  # item i: prompt i // samples, sample i % samples
        self._look_back()

    def _look_back(self) -> None:
        """Read the spool once: how many steps are done, which traces have finished, and where each trace that
        has not stands (its last step, its trace as stored: a kill may have come between the two)."""
        self.last_step: dict[str, dict] = {}  # trace id -> last step, of traces a kill left part way
        self._done = 0

        def finished_traces():
            for row in self.job.records("trace_steps"):
                # a stopped trace's remaining rounds count as done: they will never run
                self._done += 1 + (self.rounds - row["round"] if row["stopped"] else 0)
                if row["stopped"] or row["round"] >= self.rounds:
                    self.last_step.pop(row["trace_id"], None)
                    yield row["trace_id"]
                else:
                    self.last_step[row["trace_id"]] = row

        self.finished = KeySet(finished_traces())
        # traces stored and not finished: part way, or killed between the trace and its first step
        self.stored_traces = {
            row["trace_id"]: Trace(**row) for row in self.job.records("traces") if row["trace_id"] not in self.finished
        }

    def total(self) -> int:
        return self.items * (self.rounds + 1)

    def done(self) -> int:
        return self._done

    def batches(self):
        """(chunk start, [(item index, prompt, sample, trace id)] of its unfinished traces), chunk by chunk."""
        samples, run_id = self.config.samples, self.job.run_id
        for chunk_start in range(0, self.items, self.config.chunk_size):
            todo = []
            for index in range(chunk_start, min(self.items, chunk_start + self.config.chunk_size)):
                prompt, sample = self.prompts[index // samples], index % samples
                trace_id = f"{run_id}:{prompt.id}:{sample}"
                if trace_id not in self.finished:
                    todo.append((index, prompt, sample, trace_id))
            if todo:
                yield chunk_start, todo

    def backends(self) -> tuple[Backend, Backend]:
        if self._backends is None:
            config = self.config
            policy = load_backend(config.model, self.workspace, config.dtype)
            critic = policy
            if config.critic_model:
                critic = load_backend(config.critic_model, self.workspace, config.dtype)
            self._backends = policy, critic
        if not self.engine:
            self.job.record_engines(policy=self._backends[0], critic=self._backends[1])
            self.engine = engine_name(self._backends[0])
        return self._backends

    def in_flight(self) -> int:
        # each stage of a chunk is one request per trace
        return min(in_flight_for(backend, self.config.chunk_size) for backend in self.backends())

    def store(self, records: list[tuple[str, list[dict]]]) -> None:
        for table, rows in records:
            self.job.append(table, rows)
            if table == "trace_steps":
                self._done += sum(1 + (self.rounds - r["round"] if r["stopped"] else 0) for r in rows)

    def run(self, batch, count: Callable[[float], None]) -> Iterator[list[tuple[str, list[dict]]]]:
        chunk_start, todo = batch
        policy, critic = self.backends()
        states, new_traces = [], []
        for index, prompt, sample, trace_id in todo:
            last = self.last_step.pop(trace_id, None)
            trace = self.stored_traces.pop(trace_id, None)
            if trace is None:
                trace = self._new_trace(trace_id, prompt, sample, policy, critic)
                new_traces.append(trace)
            states.append(_State(trace, index, last["response"] if last else "", last["round"] if last else -1, False))
        missing = [s for s in states if s.round < 0]
        if missing:
            yield from self._run_initial(missing, new_traces, chunk_start, count)
        for round_ in range(1, self.rounds + 1):
            self.job.stop_if_cancelled()
            active = [s for s in states if not s.stopped and s.round == round_ - 1]
            if active:
                yield from self._run_round(active, round_, count)

    def _new_trace(self, trace_id: str, prompt, sample: int, policy: Backend, critic: Backend) -> Trace:
        """A trace whose prompt fits both models' contexts with everything that surrounds it in a round."""
        c, config = self.constitution, self.config
        text = fit_prompt(policy, prompt.prompt, lambda t: [{"role": "user", "content": t}], config.max_new_tokens)
        if self.rounds:
            longest = max(c.enabled_principles, key=lambda p: len(p.critique_request) + len(p.revision_request))

            def revision(t: str) -> Chat:
                return revision_chat(critique_chat(t, "", longest, c, config.few_shot), "", longest)

            # the answer, the critique and the revision each take up to max_new_tokens
            text = fit_prompt(critic, text, revision, 3 * config.max_new_tokens)
        warning = ""
        if text != prompt.prompt:
            warning = f"prompt cut from {len(prompt.prompt):,} to {len(text):,} characters to fit the model's context"
        return Trace(
            trace_id,
            self.job.run_id,
            prompt.id,
            text,
            prompt.category,
            sample,
            policy.name,
            c.name,
            c.version,
            warning=warning,
        )

    def _run_initial(self, missing: list[_State], new_traces: list[Trace], chunk_start: int, count) -> Iterator[list]:
        policy, _ = self.backends()
        params = self.config.sampling()
        params = SamplingParams(**{**asdict(params), "seed": params.seed + 7919 * chunk_start})
        chats = [[{"role": "user", "content": s.trace.prompt}] for s in missing]
        new = {t.trace_id: t for t in new_traces}
        for done in generate_each(policy, chats, params, on_done=count):
            traces, steps = [], []
            for i, a in done:
                state = missing[i]
                state.response, state.round = a.text, 0
                if state.trace.trace_id in new:
                    traces.append(new.pop(state.trace.trace_id))
                steps.append(
                    TraceStep(
                        state.trace.trace_id, 0, None, None, a.text, a.prompt_tokens, 0, a.completion_tokens, a.seconds
                    )
                )
            # traces before steps: a step on disk always has its trace on disk
            yield [("traces", [to_row(t) for t in traces]), ("trace_steps", [to_row(st) for st in steps])]

    def _run_round(self, active: list[_State], round_: int, count: Callable[[float], None]) -> Iterator[list]:
        config, constitution = self.config, self.constitution
        _, critic = self.backends()
        params = config.sampling()
        principles = [
            choose_principle(constitution, self.strategy, config.seed, s.trace.trace_id, s.index, round_)
            for s in active
        ]
        critique_chats = [
            critique_chat(s.trace.prompt, s.response, p, constitution, config.few_shot)
            for s, p in zip(active, principles, strict=True)
        ]

        def half_steps(chats: int) -> None:  # a round is one step: its critique the first half, its revision the second
            count(0.5 * chats)

        critiques = critic.generate(
            critique_chats, SamplingParams(**{**asdict(params), "seed": params.seed + round_}), on_done=half_steps
        )
        self.job.stop_if_cancelled()
        revise = [i for i, c in enumerate(critiques) if not says_nothing_to_change(c.text, self.stop_phrases)]

        def steps(revised: list[tuple[int, Generation | None]]) -> list:
            new_steps = []
            for i, revision in revised:
                state, critique = active[i], critiques[i]
                step = TraceStep(
                    trace_id=state.trace.trace_id,
                    round=round_,
                    principle_id=principles[i].id,
                    critique=critique.text,
                    response=revision.text if revision else state.response,
                    prompt_tokens=critique.prompt_tokens,
                    critique_tokens=critique.completion_tokens,
                    response_tokens=revision.completion_tokens if revision else 0,
                    seconds=critique.seconds + (revision.seconds if revision else 0.0),
                    stopped=revision is None,
                )
                state.response, state.round, state.stopped = step.response, round_, step.stopped
                new_steps.append(step)
            return [("trace_steps", [to_row(st) for st in new_steps])]

        to_revise = set(revise)
        if len(revise) < len(active):  # traces whose critique asks for no change end this round now
            yield steps([(i, None) for i in range(len(active)) if i not in to_revise])
        for done in generate_each(
            critic,
            [revision_chat(critique_chats[i], critiques[i].text, principles[i]) for i in revise],
            SamplingParams(**{**asdict(params), "seed": params.seed + 1000 + round_}),
            on_done=half_steps,
        ):
            yield steps([(revise[j], revision) for j, revision in done])


GENERATE = JobKind("generate", GenerateConfig, _plan, GenerateWork, "SL-CAI", prefix="gen")
