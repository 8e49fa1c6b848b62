"""SL-CAI (Bai et al. 2022, section 3): answer, then critique and revise against sampled principles.

Work walks in chunks of traces; inside a chunk every round is one batched call per stage
(initial answers, critiques, revisions), never one prompt at a time. Each stage's records are
spooled before the next begins, so a killed job resumes at the stage it was in.

Each round critiques the *latest* answer afresh (the conversation is prompt, answer, critique
request), rather than growing one long conversation over every round as the paper's samples do:
small models lose the thread in long contexts, and the trace still records every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from .backends import DEFAULT_MODEL, Backend, Chat, SamplingParams, load_backend
from .constitution import Constitution, Principle, load_constitution
from .jobs import JobFolder, ending_on_failure, run_id_for
from .prompts import load_prompts
from .records import Trace, TraceStep, to_row
from .workspace import Workspace


@dataclass
class GenerateConfig:
    constitution: str = field(metadata={"help": "Path of the constitution YAML."})
    prompts: str = field(metadata={"help": "Prompt source: .jsonl/.csv/.txt, a datasets folder, or hf:NAME[:SPLIT]."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Policy model spec (answers the prompts)."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "Local models' precision; auto: bf16 on a GPU, fp32 on a CPU."}
    )
    critic_model: str | None = field(
        default=None, metadata={"help": "Model that critiques and revises; the policy model when unset."}
    )
    rounds: int | None = field(default=None, metadata={"help": "Critique→revision rounds; constitution default."})
    samples: int = field(default=1, metadata={"help": "Independent traces per prompt."})
    principle_sampling: Literal["random", "round_robin"] | None = field(
        default=None, metadata={"help": "How each round's principle is chosen; constitution default."}
    )
    few_shot: bool = field(default=True, metadata={"help": "Show the constitution's worked examples first."})
    early_stop: bool = field(default=True, metadata={"help": "End a trace when its critique asks for no change."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens per answer, critique or revision."})
    min_new_tokens: int = field(default=0, metadata={"help": "At least this many tokens (benchmarks fix lengths)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 is greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    seed: int = field(default=0, metadata={"help": "Seed for principle choice and sampling."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    chunk_size: int = field(default=64, metadata={"help": "Traces carried through all rounds together."})
    skip_bad_lines: bool = field(default=False, metadata={"help": "Skip bad prompt lines instead of stopping."})
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
) -> SingleRound:
    """Answer `prompt` (unless a response is given), then critique and revise it under one principle."""
    principle = constitution.principle(principle_id)
    if response is None:
        [answer] = backend.generate([[{"role": "user", "content": prompt}]], params)
        response = answer.text
    chat = critique_chat(prompt, response, principle, constitution, few_shot)
    [critique] = backend.generate([chat], params)
    [revision] = backend.generate([revision_chat(chat, critique.text, principle)], params)
    return SingleRound(prompt, response, principle.id, critique.text, revision.text)


def prepare_job(config: GenerateConfig, workspace: Workspace) -> JobFolder:
    """Create (or find) the run's folder; the run id is derived from the config unless given."""
    constitution = load_constitution(config.constitution)
    prompt_set = load_prompts(
        config.prompts, on_bad_line="skip" if config.skip_bad_lines else "stop", limit=config.limit
    )
    identity = {**asdict(config), "constitution": constitution.version, "prompts": prompt_set.digest, "run_id": None}
    run_id = config.run_id or run_id_for("gen", identity)
    return JobFolder.create(
        workspace.runs_dir,
        run_id,
        {
            "kind": "generate",
            "model": config.model,
            "config": {**asdict(config), "run_id": run_id},
            "constitution": constitution.snapshot(),
        },
    )


def run_generation(
    config: GenerateConfig,
    workspace: Workspace | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    backends: tuple[Backend, Backend] | None = None,
) -> JobFolder:
    """Run (or resume) an SL-CAI job to completion; returns its folder. Records are spooled there,
    and `Store.ingest` takes them in."""
    workspace = workspace or Workspace.from_env()
    job = prepare_job(config, workspace)
    job.repair()
    if job.cancel_requested() and job.progress().status == "pending":
        # cancelled before its process got going: honour it rather than forget it
        job.set_progress("cancelled", 0, 0, "cancelled before it started; run again to start it")
        job.clear_cancel()
        return job
    job.clear_cancel()  # an old, already honoured request: running again means resuming
    constitution = load_constitution(config.constitution)
    prompt_set = load_prompts(
        config.prompts, on_bad_line="skip" if config.skip_bad_lines else "stop", limit=config.limit
    )
    rounds = config.rounds or constitution.generation.rounds
    strategy = config.principle_sampling or constitution.generation.principle_sampling
    stop_phrases = constitution.generation.stop_phrases if config.early_stop else []
    items = [(p, s) for p in prompt_set.prompts for s in range(config.samples)]
    total = len(items) * (rounds + 1)

    traces = {t["trace_id"]: Trace(**t) for t in job.read("traces")}
    steps: dict[str, list[TraceStep]] = {}
    for row in job.read("trace_steps"):
        steps.setdefault(row["trace_id"], []).append(TraceStep(**row))

    def done_count() -> int:
        # a stopped trace's remaining rounds count as done: they will never run
        return sum((rounds + 1) if s and s[-1].stopped else len(s) for s in steps.values())

    def report(status: str = "running", message: str = "") -> None:
        job.set_progress(status, done_count(), total, message)
        if on_progress:
            on_progress(done_count(), total)

    report()
    with ending_on_failure(report):
        if backends is None:
            calls = len(items) * (2 * rounds + 1)  # answers, critiques and revisions: the auto engine's rule
            policy = load_backend(config.model, workspace, config.dtype, calls=calls)
            critic = policy
            if config.critic_model:
                critic = load_backend(config.critic_model, workspace, config.dtype, calls=calls)
        else:
            policy, critic = backends
        job.record_engines(policy=policy, critic=critic)
        run_id = job.run_id
        for chunk_start in range(0, len(items), config.chunk_size):
            chunk = items[chunk_start : chunk_start + config.chunk_size]
            states = _run_initial(job, run_id, chunk, chunk_start, traces, steps, policy, config, constitution)
            report()
            for round_ in range(1, rounds + 1):
                if job.cancel_requested():
                    report("cancelled", "cancelled by request; run again to resume")
                    return job
                active = [s for s in states if not s.stopped and s.round == round_ - 1]
                if not active:
                    continue
                _run_round(job, active, round_, steps, critic, config, constitution, strategy, stop_phrases)
                report()
        report("done")
        return job


def _run_initial(job, run_id, chunk, chunk_start, traces, steps, policy, config, constitution) -> list[_State]:
    states, missing = [], []
    for offset, (prompt, sample) in enumerate(chunk):
        trace_id = f"{run_id}:{prompt.id}:{sample}"
        if trace_id not in traces:
            traces[trace_id] = Trace(
                trace_id,
                run_id,
                prompt.id,
                prompt.prompt,
                prompt.category,
                sample,
                policy.name,
                constitution.name,
                constitution.version,
            )
        done = steps.get(trace_id, [])
        state = _State(
            traces[trace_id],
            chunk_start + offset,
            done[-1].response if done else "",
            done[-1].round if done else -1,
            bool(done) and done[-1].stopped,
        )
        states.append(state)
        if not done:
            missing.append(state)
    if missing:
        params = config.sampling()
        params = SamplingParams(**{**asdict(params), "seed": params.seed + 7919 * chunk_start})
        answers = policy.generate([[{"role": "user", "content": s.trace.prompt}] for s in missing], params)
        new_steps = [
            TraceStep(s.trace.trace_id, 0, None, None, a.text, a.prompt_tokens, 0, a.completion_tokens, a.seconds)
            for s, a in zip(missing, answers, strict=True)
        ]
        # traces before steps: a step on disk always has its trace on disk
        job.append("traces", [to_row(s.trace) for s in missing])
        job.append("trace_steps", [to_row(st) for st in new_steps])
        for s, st in zip(missing, new_steps, strict=True):
            steps[s.trace.trace_id] = [st]
            s.response, s.round = st.response, 0
    return states


def _run_round(
    job,
    active: list[_State],
    round_: int,
    steps,
    critic: Backend,
    config: GenerateConfig,
    constitution: Constitution,
    strategy: str,
    stop_phrases: list[str],
) -> None:
    params = config.sampling()
    principles = [
        choose_principle(constitution, strategy, config.seed, s.trace.trace_id, s.index, round_) for s in active
    ]
    critique_chats = [
        critique_chat(s.trace.prompt, s.response, p, constitution, config.few_shot)
        for s, p in zip(active, principles, strict=True)
    ]
    critiques = critic.generate(critique_chats, SamplingParams(**{**asdict(params), "seed": params.seed + round_}))
    revise = [i for i, c in enumerate(critiques) if not says_nothing_to_change(c.text, stop_phrases)]
    revisions = critic.generate(
        [revision_chat(critique_chats[i], critiques[i].text, principles[i]) for i in revise],
        SamplingParams(**{**asdict(params), "seed": params.seed + 1000 + round_}),
    )
    revision_of = dict(zip(revise, revisions, strict=True))
    new_steps = []
    for i, (state, principle, critique) in enumerate(zip(active, principles, critiques, strict=True)):
        revision = revision_of.get(i)
        new_steps.append(
            TraceStep(
                trace_id=state.trace.trace_id,
                round=round_,
                principle_id=principle.id,
                critique=critique.text,
                response=revision.text if revision else state.response,
                prompt_tokens=critique.prompt_tokens,
                critique_tokens=critique.completion_tokens,
                response_tokens=revision.completion_tokens if revision else 0,
                seconds=critique.seconds + (revision.seconds if revision else 0.0),
                stopped=revision is None,
            )
        )
    job.append("trace_steps", [to_row(st) for st in new_steps])
    for state, step in zip(active, new_steps, strict=True):
        steps[state.trace.trace_id].append(step)
        state.response, state.round, state.stopped = step.response, round_, step.stopped
