"""Reward callables for the training tests, importable by name (`tests.train_rewards:low_ids`) so that
a run in another process can use them too."""


def low_ids(prompts, completions, completion_ids, **kwargs):
    """The share of an answer's tokens among the target tokens (ids below 250: half the tiny vocabulary)."""
    return [sum(t < 250 for t in ids) / max(len(ids), 1) for ids in completion_ids]
