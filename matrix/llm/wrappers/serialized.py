"""The one-call-at-a-time wrapper: a backend that does not declare `concurrent_calls = True`
(an in-process model) takes one call at a time, from however many threads and roles share it
(the simulator's `schedule: groups` calls roles from several threads). It is also where a
backend that only implements `LLM.generate` enters the streaming stack: it then reports no
row as it arrives, and `StreamedLLM` above reports them all once the batch is back."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext

from matrix.llm.protocol import LLM, Chat, Completion, Sampling, StreamingLLM
from matrix.llm.wrappers.base import LLMWrapper, OnResult

_LOCKS: dict[int, threading.Lock] = {}  # one per backend object, shared by its roles
_LOCKS_GUARD = threading.Lock()


def backend_lock(backend: LLM) -> threading.Lock | None:
    """The lock every caller of `backend` takes, or None when it serves concurrent calls."""
    if getattr(backend, "concurrent_calls", False):
        return None
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(backend), threading.Lock())


class SerializedLLM(LLMWrapper):
    """The bottom of every role's stack: `inner` is the backend itself, a plain `LLM` or a
    `StreamingLLM`, or a view of it (the raw-text `RawPrompts`) that takes the lock of the
    backend it views, `lock_of`."""

    def __init__(self, backend: LLM, lock_of: LLM | None = None):
        super().__init__(backend)  # type: ignore[arg-type]
        self.backend = backend
        self._lock = backend_lock(lock_of or backend)

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        with self._lock if self._lock is not None else nullcontext():
            if isinstance(self.backend, StreamingLLM):
                return self.backend.generate_streaming(chats, sampling, on_result)
            return self.backend.generate(chats, sampling)
