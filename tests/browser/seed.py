"""Test data for the app's tests (AppTest and browser): a data folder whose records arrive the way a real
job's do, spooled into a job folder that the app ingests, plus a copy of the shipped constitutions."""

from __future__ import annotations

import shutil
from pathlib import Path

from cai_core.constitution import load_constitution
from cai_core.jobs import JobFolder
from cai_core.records import AILabel, Pair, Trace, TraceStep, to_row
from cai_core.workspace import PROJECT_ROOT, Workspace


def model_in_workspace(model_path: str, workspace: Workspace) -> str:
    """A copy of a model folder inside the workspace, where the browser may name it (it may not name the
    session's tiny model in its temporary folder)."""
    target = workspace.models_dir / Path(model_path).name
    if not target.exists():
        shutil.copytree(model_path, target)
    return str(target)


SEED_RUN = "seed-run"
FOUR_ROUNDS = f"{SEED_RUN}:dog:0"
HOSTILE = f"{SEED_RUN}:hostile:0"
SCRIPT = "<script>window.__xss=1</script>"
IMAGE = '<img src=x onerror="window.__xss=2">'
REMOTE_IMAGE = "![tracker](http://127.0.0.1:9/pixel.png)"

DOG_PROMPT = "My neighbour's dog barks all night. How can I make it stop?"
DOG_ROUNDS = [
    # (principle, critique, revision); round 0's answer comes first
    (None, None, "Mix some chocolate into a piece of meat and throw it over the fence. It will go quiet."),
    (
        "avoid-harm",
        "The answer tells the person how to poison a dog. Chocolate is toxic to dogs and could kill it.",
        "I can't help with harming the dog. Talk to your neighbour first; they may not know it barks at night.",
    ),
    (
        "no-needless-refusal",
        "The revision refuses and then gives only one idea. The person has a real problem worth solving.",
        "I can't help with harming the dog, but you can fix the noise. Talk to your neighbour first; they "
        "may not know it barks at night. If that fails, try a mediation service.",
    ),
    (
        "clarity",
        "The answer is clear but could list the options in order.",
        "Barking at night is exhausting. Try these in order: talk to your neighbour, write them a friendly "
        "note, then ask a mediation service or the council's noise team for help.",
    ),
    (
        "honesty",
        "Nothing false here; the answer is accurate.",
        "Barking at night is exhausting. Try these in order: talk to your neighbour, write them a friendly "
        "note, then ask a mediation service or the council's noise team for help. Earplugs help meanwhile.",
    ),
]


def copy_constitutions(target: Path) -> Path:
    shutil.copytree(PROJECT_ROOT / "constitutions", target)
    return target


def seed_traces(workspace: Workspace, constitution_path: Path, hostile: bool = True) -> JobFolder:
    """A finished run with a four-round trace and (if `hostile`) a trace whose texts try to run script
    and load a remote image."""
    constitution = load_constitution(constitution_path)
    job = JobFolder.create(
        workspace.runs_dir,
        SEED_RUN,
        {
            "kind": "generate",
            "model": "seed-model",
            "config": {},
            "constitution": {
                "name": constitution.name,
                "version": constitution.version,
                "content": constitution.to_yaml(),
            },
        },
    )

    def trace(trace_id: str, prompt_id: str, prompt: str, created_at: float) -> dict:
        return to_row(
            Trace(
                trace_id,
                SEED_RUN,
                prompt_id,
                prompt,
                "test",
                0,
                "seed-model",
                constitution.name,
                constitution.version,
                created_at,
            )
        )

    traces = [trace(FOUR_ROUNDS, "dog", DOG_PROMPT, 2000.0)]
    steps = [
        TraceStep(FOUR_ROUNDS, round_, principle, critique, response, 20 + round_, 10 * round_, 30, 0.5 + round_)
        for round_, (principle, critique, response) in enumerate(DOG_ROUNDS)
    ]
    if hostile:
        traces.append(trace(HOSTILE, "hostile", f"{SCRIPT} Tell me about {IMAGE} and {REMOTE_IMAGE}", 1000.0))
        critique, revision = f"The answer echoes {IMAGE} and {SCRIPT}.", f"I won't repeat {IMAGE}."
        steps += [
            TraceStep(HOSTILE, 0, None, None, f"Sure: {SCRIPT} {IMAGE} {REMOTE_IMAGE}", 12, 0, 24, 0.3),
            TraceStep(HOSTILE, 1, "avoid-harm", critique, revision, 30, 9, 8, 0.6),
        ]
    job.append("traces", traces)
    job.append("trace_steps", [to_row(step) for step in steps])
    job.set_progress("done", len(steps), len(steps))
    return job


def seeded_data(root: Path, hostile: bool = True) -> Workspace:
    """ROOT/constitutions (a copy of the shipped ones) and ROOT/data with the seeded run."""
    constitutions = copy_constitutions(root / "constitutions")
    workspace = Workspace(root / "data")
    seed_traces(workspace, constitutions / "hhh.yaml", hostile)
    return workspace


# --- RLAIF: response pairs and an AI label run over them ---------------------------------------------------

SEED_PAIRS_RUN = "seed-pairs"
SEED_LABEL_RUN = "seed-labels"
SEED_JUDGE = "seed-judge"


def seed_pair_texts(n: int) -> list[Pair]:
    """N pairs whose two responses differ visibly, so a test can tell which side the page put on the left."""
    return [
        Pair(
            f"seed-pair-{i:02d}",
            f"Question {i}: how do I keep my houseplant number {i} alive?",
            f"Answer one for plant {i}: water it weekly and give it indirect light.",
            f"Answer two for plant {i}: leave it alone, plants look after themselves.",
            "import",
            "seed",
            i,
            "chosen",
            "rejected",
        )
        for i in range(n)
    ]


def logprob_label(
    run_id: str, pair_id: str, principle: str, judge: str, version: str, p_order1: float, p_order2: float
) -> AILabel:
    """An AI label as a sampling logprob judge without reasoning stores it: P(a better) from both orders."""
    p_a = (p_order1 + 1 - p_order2) / 2
    return AILabel(
        run_id, pair_id, principle, judge, version, "sample", "logprob", False, 0, p_order1, p_order2, p_a, False
    )


def seed_pairs(workspace: Workspace, constitution_path: Path, n: int = 30) -> list[Pair]:
    """N pairs and a finished AI label run over them, spooled into job folders the way `cai pairs` and
    `cai label` write them; the judge's per-order probabilities vary by pair and are never exactly 0.5."""
    constitution = load_constitution(constitution_path)
    pairs = seed_pair_texts(n)
    pairs_job = JobFolder.create(workspace.runs_dir, SEED_PAIRS_RUN, {"kind": "pairs", "model": "seed-model"})
    pairs_job.append("pairs", [to_row(p) for p in pairs])
    pairs_job.set_progress("done", n, n)
    principle = constitution.enabled_principles[0].id
    labels = []
    for i, pair in enumerate(pairs):
        p_order1, p_order2 = 0.07 + 0.9 * ((i * 7) % 11) / 10, 0.1 + 0.8 * ((i * 3) % 7) / 6
        labels.append(
            logprob_label(SEED_LABEL_RUN, pair.pair_id, principle, SEED_JUDGE, constitution.version, p_order1, p_order2)
        )
    label_job = JobFolder.create(
        workspace.runs_dir,
        SEED_LABEL_RUN,
        {"kind": "label", "model": SEED_JUDGE, "config": {}, "constitution": constitution.snapshot()},
    )
    label_job.append("ai_labels", [to_row(label) for label in labels])
    label_job.set_progress("done", n, n)
    return pairs
