"""The call cache wrapper: answers what the persistent cache holds and sends only the misses
down, as one batch, each distinct request once (greedy duplicates share one answer; sampled
copies are keyed apart by `batch_keys`). Each answer is stored the moment it is reported, so
rows paid for before a failure are kept for the rerun."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matrix.llm.cache import CallCache, batch_keys, model_identity
from matrix.llm.protocol import Chat, Completion, Sampling, StreamingLLM
from matrix.llm.wrappers.base import LLMWrapper, OnResult, send_subset


class CachedLLM(LLMWrapper):
    """`on_hits(n)` hears, after every batch (also a failed one), how many of its rows were
    not sent down: cache hits plus duplicates of a row that was."""

    def __init__(
        self,
        inner: StreamingLLM,
        cache: CallCache,
        on_hits: Callable[[int], None] | None = None,
    ):
        super().__init__(inner)
        self.cache = cache
        self.on_hits = on_hits

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        keys = batch_keys(model_identity(self.name), chats, sampling)
        hits = self.cache.get_many(keys)
        todo: dict[str, int] = {}  # one row sent down per distinct missing key
        for i, k in enumerate(keys):
            if k not in hits:
                todo.setdefault(k, i)
        send = list(todo.values())

        def store(i: int, c: Completion) -> None:
            self.cache.put(keys[i], c)
            on_result(i, c)

        try:
            answers = send_subset(self.inner, chats, send, sampling, store) if send else []
        finally:
            if self.on_hits is not None:
                self.on_hits(len(chats) - len(send))
        hits.update({keys[i]: c for i, c in zip(send, answers, strict=True)})
        return [hits[k] for k in keys]
