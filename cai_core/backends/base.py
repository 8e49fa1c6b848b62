"""The one interface every model backend speaks: batched chat generation and option scoring."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

Chat = list[dict[str, str]]  # [{"role": "user" | "assistant" | "system", "content": ...}, ...]


class BackendError(RuntimeError):
    """A model could not be loaded or reached; the message says which and why."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per answer."})
    temperature: float = field(default=0.7, metadata={"help": "0 means greedy decoding."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling; same seed and batch, same text."})
    min_new_tokens: int = field(
        default=0, metadata={"help": "Generate at least this many tokens (benchmarks fix lengths with it)."}
    )


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time of the batch this answer came from, shared evenly among its members


class Backend(Protocol):
    name: str  # the model as records should name it
    engine: str  # what runs it, as records should name it: "hf", "vllm" or "openai"
    dtype: str | None  # the precision its weights run in ("float32", "bfloat16"); None when remote
    parameters: int | None  # its parameter count; None when remote
    context_length: int | None  # the most tokens a prompt and its answer may hold together; None: unknown

    def count_tokens(self, chat: Chat) -> int:
        """How many tokens the chat takes as a prompt (template included); needed only when context_length is known."""
        ...

    def generate(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> list[Generation]:
        """Answer every chat (each ending with a user turn); one Generation per chat, in order. `on_done(k)` is
        called as k more chats are answered, so that a job can show progress inside one long call."""
        ...

    def score_options(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        """Log-probability of each option as the start of the assistant's reply to each chat.

        Callers put chats that share a long start next to each other (a judgment's two orders, one after
        the other): a backend may compute what neighbours share once (a shared pass, a prefix cache)."""
        ...


def stream(backend: Backend, chat: Chat, params: SamplingParams) -> Iterator[str]:
    """The answer to one chat in pieces as the engine produces them; joined, the pieces are the text `generate`
    gives. An engine that can stream has a `stream` method of the same signature (transformers and OpenAI-compatible
    servers do); one that cannot (vLLM's in-process engine) gives its whole answer as one piece."""
    own = getattr(backend, "stream", None)
    if own is not None:
        yield from own(chat, params)
    else:
        yield backend.generate([chat], params)[0].text


def generate_each(
    backend: Backend, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
) -> Iterator[list[tuple[int, Generation]]]:
    """`backend.generate`'s answers as they come, as lists of (index in `chats`, Generation): each list what has
    come since the last, `on_done` called for its answers before it is given. A job stores each list at once, so
    what it shows does not wait for the slowest answer of a batch. An engine that answers a batch as a whole (the
    in-process ones) gives one list; one that answers each chat on its own (a server) has a `generate_each` method
    of the same signature."""
    own = getattr(backend, "generate_each", None)
    if own is not None:
        yield from own(chats, params, on_done)
    else:
        yield list(enumerate(backend.generate(chats, params, on_done)))


def stripped(pieces: Iterable[str]) -> Iterator[str]:
    """Pieces of a text without its leading and trailing whitespace, as `Generation.text` is stripped: trailing
    whitespace is held back until something follows it."""
    started, held = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        body = piece.rstrip()
        if body:
            yield held + body
            held = piece[len(body) :]
        else:
            held += piece
