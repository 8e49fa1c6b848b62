"""A judge whose reliability per principle is known, served over the OpenAI wire (`openai_server.serve`).

It knows people's choice on every hh-rlhf pair it may be asked about and answers each principle's question by a
set behaviour: "people" (the side people chose), "coin" (a side by a coin seeded by the pair and principle, so both
orders of one comparison agree) or "contrary" (the side people rejected), always with a confidence drawn from
`confidence` (a judge that is wrong is as sure of itself as one that is right). The label job, the store, the gate
and the trainers all run as they do against a real server: only the log-probabilities of "A" and "B" are known.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator

from cai_core.backends.base import Generation
from cai_core.constitution import Constitution
from cai_core.pairs import Pair

from .openai_server import serve

BEHAVIOURS = ("people", "coin", "contrary")


class KnownTruthJudge:
    def __init__(
        self,
        constitution: Constitution,
        behaviour: dict[str, str],
        pairs: list[Pair],
        people: dict[str, str],
        confidence: tuple[float, float] = (0.75, 0.95),
        seed: int = 0,
    ):
        unknown = set(behaviour.values()) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"behaviour {sorted(unknown)}: choose from {BEHAVIOURS}")
        by_id = {p.id: p for p in constitution.enabled_principles}
        self.behaviour = {by_id[pid].preference_question: (pid, how) for pid, how in behaviour.items()}
        # (first shown, second shown) -> which of the two people chose, for both orders of every pair
        self.chosen_first: dict[tuple[str, str], bool] = {}
        for pair in pairs:
            a_chosen = people[pair.pair_id] == "a"
            self.chosen_first[(pair.response_a, pair.response_b)] = a_chosen
            self.chosen_first[(pair.response_b, pair.response_a)] = not a_chosen
        self.confidence, self.seed = confidence, seed

    def p_first(self, messages: list[dict]) -> float:
        """P(the option shown first is better) for a judge chat (`feedback.comparison_chat`)."""
        text = messages[-1]["content"]
        question = next((q for q in self.behaviour if f"\n{q}\n(A) " in text), None)
        if question is None:
            raise ValueError("the chat asks no question of a principle this judge was given a behaviour for")
        principle, how = self.behaviour[question]
        start = text.index(f"\n{question}\n(A) ")
        options = text[start + len(question) + 6 : text.rindex("\n\n")]
        first, second = self._split(options)
        people_first = self.chosen_first[(first, second)]
        key = f"{self.seed}:{principle}:{min(first, second)}:{max(first, second)}"
        draw = random.Random(key)
        sure = draw.uniform(*self.confidence)
        if how == "people":
            favours_first = people_first
        elif how == "contrary":
            favours_first = not people_first
        else:  # the coin is tossed for the pair, whichever answer is shown first
            favours_first = (draw.random() < 0.5) == (first == min(first, second))
        return sure if favours_first else 1 - sure

    def _split(self, options: str) -> tuple[str, str]:
        """The two answers of "{a}\\n(B) {b}": the split that names a known pair (an answer may hold "(B) ")."""
        at = options.find("\n(B) ")
        while at >= 0:
            first, second = options[:at], options[at + 5 :]
            if (first, second) in self.chosen_first:
                return first, second
            at = options.find("\n(B) ", at + 1)
        raise ValueError("the chat compares two answers of no pair this judge knows")

    def top_logprobs(self, messages: list[dict], k: int) -> list[dict]:
        p = self.p_first(messages)
        entries = [{"token": "A", "logprob": math.log(p)}, {"token": "B", "logprob": math.log(1 - p)}]
        return sorted(entries, key=lambda e: -e["logprob"])[:k]

    def generate(self, chats: list[list[dict]], params) -> list[Generation]:
        return [Generation("A" if self.p_first(chat) >= 0.5 else "B", 0, 1, 0.0) for chat in chats]


@contextlib.contextmanager
def known_truth_server(judge: KnownTruthJudge, model: str = "known-truth") -> Iterator[str]:
    """The judge on a loopback server; yields its model spec (`openai:MODEL@URL`) for a label run."""
    with serve(judge, model=model, top_logprobs=judge.top_logprobs) as server:
        yield f"openai:{model}@{server.url}"
