"""Reward callables for the training tests, importable by name (`tests.train_rewards:low_ids`) so that
a run in another process can use them too."""

import os
from pathlib import Path


def low_ids(prompts, completions, completion_ids, **kwargs):
    """The share of an answer's tokens among the target tokens (ids below 250: half the tiny vocabulary)."""
    return [sum(t < 250 for t in ids) / max(len(ids), 1) for ids in completion_ids]


_calls = []


def low_ids_then_cancel(prompts, completions, completion_ids, **kwargs):
    """`low_ids` that, on rank 0's second call, writes the cancel file named by $CAI_TEST_CANCEL, once (a
    resumed run is not cancelled again): a cancel at a known step of a run in other processes."""
    _calls.append(1)
    target = Path(os.environ["CAI_TEST_CANCEL"])
    once = target.with_name("cancelled-once")
    if len(_calls) == 2 and os.environ.get("RANK", "0") == "0" and not once.exists():
        once.touch()
        target.touch()
    return low_ids(prompts, completions, completion_ids)


def low_ids_failing_on_rank_1(prompts, completions, completion_ids, **kwargs):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 cannot score")
    return low_ids(prompts, completions, completion_ids)


def answer_length(prompts, completions, completion_ids, **kwargs):
    """Pays for length alone (characters, so a fixed number of tokens can still grow): the classic reward hack.
    PPO passes answers as text, TRL's GRPO and RLOO as the assistant message of a conversation."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [len(text) / 50 for text in texts]


def prefers_shorter(prompts, now, start):
    """A monitor judge that finds the shorter answer better: beside `answer_length`, the hacking signature."""
    import math

    return [1 / (1 + math.exp((len(a) - len(b)) / 20)) for a, b in zip(now, start, strict=True)]
