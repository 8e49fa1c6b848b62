"""Reading the OpenAI-compatible protocol as vLLM, llama.cpp, Ollama and OpenAI speak it: the routes, a chat
completion, a stream's events, prompt and top log-probs, a server's error message. Standard library only."""

from __future__ import annotations

import json
import math
import urllib.error
from collections.abc import Iterator

from .base import BackendError, Generation


def stream_pieces(response, url: str) -> Iterator[str]:
    """The text pieces of a chat completion's server-sent events (`data: {...}` lines, then `data: [DONE]`)."""
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # blank lines between events, comments (": keep-alive")
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        try:
            choices = json.loads(data).get("choices") or [{}]
        except (ValueError, AttributeError):
            raise BackendError(f"{url} sent an event that is not a chat completion chunk: {data[:200]!r}") from None
        piece = (choices[0].get("delta") or {}).get("content")
        if piece:
            yield piece


def to_generation(data: dict, url: str, seconds: float) -> Generation:
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"{url} answered without a chat completion: {json.dumps(data)[:300]}") from None
    usage = data.get("usage") or {}
    return Generation(
        # Stripped like the local backend's text, so records do not depend on where the model ran.
        text=(message.get("content") or "").strip(),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        seconds=seconds,
    )


def api_url(base: str, route: str) -> str:
    """The OpenAI API lives under the listed base URL (which names its /v1); vLLM serves /tokenize at the root."""
    if route.startswith("/v1/"):
        return base + route.removeprefix("/v1")
    return base.removesuffix("/v1") + route


def token_ids(data: dict, url: str) -> list[int]:
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise BackendError(f"{url} answered /tokenize without token ids: {json.dumps(data)[:200]}")
    return tokens


def next_token_logprobs(data: dict, url: str, prompts: int) -> list[dict[int, float]]:
    """{token id: logprob} after each prompt of a completions request, from its `token_id:N` top log-probs."""
    try:
        choices = sorted(data["choices"], key=lambda c: c["index"])
        tops = [c["logprobs"]["top_logprobs"][0] for c in choices]
        after = [{int(k.removeprefix("token_id:")): float(v) for k, v in top.items()} for top in tops]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise BackendError(f"{url} answered without the asked log-probabilities: {json.dumps(data)[:300]}") from None
    if len(after) != prompts:
        raise BackendError(f"{url} answered {len(after)} completions for {prompts} prompts")
    return after


def first_token_top_logprobs(data: dict) -> list[tuple[str, float]] | None:
    """[(token text, logprob), ...] for the first generated token, or None if the server sent none."""
    try:
        logprobs = data["choices"][0].get("logprobs") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    content = logprobs.get("content")
    if content:
        first = content[0]
        top = [(t["token"], float(t["logprob"])) for t in first.get("top_logprobs") or []]
        if not top and "token" in first:
            top = [(first["token"], float(first["logprob"]))]
        return top or None
    # Completions-style shape, still sent by some servers: a list of {token: logprob} per position.
    legacy = logprobs.get("top_logprobs")
    if legacy and legacy[0]:
        return [(token, float(lp)) for token, lp in legacy[0].items()]
    return None


def option_logprob(option: str, top: list[tuple[str, float]]) -> float:
    exact = [lp for token, lp in top if token == option]
    if exact:
        return max(exact)
    # Tokenizers disagree on whether the leading space belongs to the token ("A" vs " A"); take the likelier.
    wanted = option.strip()
    loose = [lp for token, lp in top if wanted and token.strip() == wanted]
    return max(loose, default=-math.inf)


def server_message(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.strip()[:300] or str(exc.reason)
    if isinstance(body, dict):
        # OpenAI/vLLM: {"error": {"message": ...}}; llama.cpp may send {"error": "..."}; FastAPI: {"detail": ...}
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, body.get("message"), body.get("detail")):
            if value:
                return str(value)[:300]
    return raw.strip()[:300]


def failure_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
