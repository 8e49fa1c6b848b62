"""The `service:` engine: a local model on the workbench's own vLLM server (`cai_core.engine_service`), spoken to
through the `openai:` client with the data folder's key.

A call that fails because the service is gone (killed, crashed, stopped by hand) starts it again and makes the
call once more: the job goes on. A batch that was half answered is asked again whole; jobs store a batch's
records only when it returns, so nothing is lost or stored twice, and the progress it already reported is not
counted again.
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

    def _restarted_after(self, exc: BackendError) -> bool:
        """After a failed call: whether the service was gone and now runs again (the call may be made once more);
        a failure of a live service (a bad request, a prompt too long) is the caller's."""
        if engine_service.find(self.workspace, self.model, self.asked_dtype) == self.service and engine_service.healthy(
            self.service, engine_service.api_key(self.workspace)
        ):
            return False
        print(f"engine service: {self.name} stopped answering ({exc}); starting it again", file=sys.stderr)
        # started again for whoever owned it: a service the app or `cai engine start` owned is still theirs to stop
        self.service = engine_service.start(self.workspace, self.model, self.asked_dtype, owner=self.service.owner)
        self._client = self._connect()
        return True

    def count_tokens(self, chat: Chat) -> int:
        raise BackendError(f"{self.name}: the service does not count tokens")

    def generate(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> list[Generation]:
        progress = _Progress(on_done)
        try:
            return self._client.generate(chats, params, progress)
        except BackendError as exc:
            if not self._restarted_after(exc):
                raise
        progress.replay()
        return self._client.generate(chats, params, progress)

    def score_options(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        try:
            return self._client.score_options(chats, options)
        except BackendError as exc:
            if not self._restarted_after(exc):
                raise
        return self._client.score_options(chats, options)

    def stream(self, chat: Chat, params: SamplingParams) -> Iterator[str]:
        """The answer in pieces; a service found gone before the first piece is started again."""
        pieces = self._client.stream(chat, params)
        try:
            first = next(pieces, None)
        except BackendError as exc:
            if not self._restarted_after(exc):
                raise
            pieces = self._client.stream(chat, params)
            first = next(pieces, None)
        if first is not None:
            yield first
            yield from pieces


class _Progress:
    """The `on_done` of a call that may be made twice: the second try reports only what goes beyond the first."""

    def __init__(self, on_done: Callable[[int], object] | None):
        self.on_done, self.reported, self.seen = on_done, 0, 0
        self._lock = threading.Lock()  # the client calls back from its request threads

    def replay(self) -> None:
        self.seen = 0

    def __call__(self, n: int) -> None:
        with self._lock:
            self.seen += n
            beyond = self.seen - self.reported
            self.reported += max(0, beyond)
        if beyond > 0 and self.on_done:
            self.on_done(beyond)
