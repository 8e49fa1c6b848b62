"""AI feedback (RLAIF): the comparison prompt a judge answers for a pair of responses.

Only the prompt is built so far, so that the constitution page can preview it; the judge itself
(soft labels from option log-probabilities, both orders) is the RLAIF issue's work.
"""

from __future__ import annotations

from .backends import Chat
from .constitution import Principle

OPTIONS = ("A", "B")


def comparison_chat(principle: Principle, prompt: str, response_a: str, response_b: str) -> Chat:
    """A multiple-choice question whose answer is a single option letter, so that the judge's
    preference can be read from the log-probabilities of "A" and "B" without parsing free text."""
    return [
        {
            "role": "user",
            "content": (
                "Consider the following conversation between a human and an assistant.\n\n"
                f"Human: {prompt}\n\n"
                f"{principle.preference_question}\n"
                f"(A) {response_a}\n"
                f"(B) {response_b}\n\n"
                "Answer with the letter of the better option only."
            ),
        }
    ]
