"""The `service:` engine: a local model on the workbench's own vLLM server (`cai_core.engine_service`), spoken to
through the `openai:` client with the data folder's key.

A call that fails because the service is gone (killed, crashed, stopped by hand) starts it again and makes the
call once more: the job goes on. A generation asks again only for the answers it had not handed over (a job
stores each as it comes, `base.generate_each`), so nothing is lost, stored twice or counted twice in progress.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

from .. import engine_service
from ..workspace import Workspace
from .base import BackendError, Chat, Generation, SamplingParams
from .default_model import FOLDER_NAME
from .openai_compat import OpenAICompatBackend

# The server batches whatever is in flight (continuous batching): many requests at once keep its batch full.
CONCURRENCY = 64
# A request waits in the server's queue behind the others: on a busy CPU a long answer takes minutes.
REQUEST_TIMEOUT = 1800.0


class ServiceBackend:
    engine = "service"
    context_length = None  # the server refuses a prompt that does not fit, with a message

    def __init__(self, workspace: Workspace, model: str, dtype: str = "auto"):
        self.workspace, self.model, self.asked_dtype = workspace, model, dtype
        # records name the model as the in-process engines do: the default model by its folder's name
        self.name = FOLDER_NAME if Path(model).name == FOLDER_NAME else model
        self.service = engine_service.start(workspace, model, dtype)
        self._client = self._connect()
        self._restarting = threading.Lock()  # several batches' calls may find the service gone at once

    # Read by the benchmark alone, so resolved when read: `auto` asks torch whether there is a GPU, and importing
    # torch (and, through the in-process engine's module, transformers' helpers) costs a job on the warm service
    # seconds before its first request, many times what the service takes to answer it.
    @cached_property
    def dtype(self) -> str:
        return engine_service.resolved_dtype(self.asked_dtype)

    @cached_property
    def parameters(self) -> int | None:
        from .vllm import _parameter_count

        return _parameter_count(Path(self.model))

    def _connect(self) -> OpenAICompatBackend:
        url, key = self.service.url, engine_service.api_key(self.workspace)
        return OpenAICompatBackend(
            self.service.name, [url], api_keys={url: key}, concurrency=CONCURRENCY, timeout=REQUEST_TIMEOUT
        )

    def _restarted_after(self, exc: BackendError, client: OpenAICompatBackend) -> bool:
        """After a call through `client` failed: whether the service was gone and now runs again (the call may be
        made once more); a failure of a live service (a bad request, a prompt too long) is the caller's."""
        with self._restarting:
            if self._client is not client:
                return True  # another call found it gone and started it again
            alive = engine_service.find(self.workspace, self.model, self.asked_dtype) == self.service
            if alive and engine_service.healthy(self.service, engine_service.api_key(self.workspace)):
                return False
            print(f"engine service: {self.name} stopped answering ({exc}); starting it again", file=sys.stderr)
            # started again for whoever owned it: a service the app or `cai engine start` owned is theirs to stop
            self.service = engine_service.start(self.workspace, self.model, self.asked_dtype, owner=self.service.owner)
            self._client = self._connect()
            return True

    def count_tokens(self, chat: Chat) -> int:
        raise BackendError(f"{self.name}: the service does not count tokens")

    @property
    def slots(self) -> int:
        """Requests the server takes at once: a job keeps several batches running on it (`jobs.in_flight_for`), as on
        a fleet, so that the server's batch does not empty while one batch waits for its slowest answer."""
        return self._client.slots

    def generate(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> list[Generation]:
        answers: dict[int, Generation] = {}
        for done in self.generate_each(chats, params, on_done):
            answers.update(done)
        return [answers[i] for i in range(len(chats))]

    def generate_each(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> Iterator[list[tuple[int, Generation]]]:
        """The answers as they come (`base.generate_each`); a service found gone part way is started again and asked
        for the rest only. `on_done` counts only what is handed over, so the second try counts nothing twice."""
        given: set[int] = set()
        client = self._client
        try:
            for done in client.generate_each(chats, params, on_done):
                given.update(index for index, _ in done)
                yield done
            return
        except BackendError as exc:
            if not self._restarted_after(exc, client):
                raise
        left = [index for index in range(len(chats)) if index not in given]
        for done in self._client.generate_each([chats[index] for index in left], params, on_done):
            yield [(left[j], generation) for j, generation in done]

    def score_options(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        client = self._client
        try:
            return client.score_options(chats, options)
        except BackendError as exc:
            if not self._restarted_after(exc, client):
                raise
        return self._client.score_options(chats, options)

    def stream(self, chat: Chat, params: SamplingParams) -> Iterator[str]:
        """The answer in pieces; a service found gone before the first piece is started again."""
        client = self._client
        pieces = client.stream(chat, params)
        try:
            first = next(pieces, None)
        except BackendError as exc:
            if not self._restarted_after(exc, client):
                raise
            pieces = self._client.stream(chat, params)
            first = next(pieces, None)
        if first is not None:
            yield first
            yield from pieces
