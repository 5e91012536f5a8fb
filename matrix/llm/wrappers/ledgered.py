"""The ledger writers: a role's `RoleLedger` (its own usage and the run's, updated together
under one process-wide lock, since several threads may call roles at once), and the two
wrappers that write to it: `CountedLLM` counts each batch asked of the role, `PaidLLM` each
row as the backend answers it (so the ledger is never behind the server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from matrix.llm.ledger import Prices, Usage
from matrix.llm.protocol import Chat, Completion, Sampling, StreamingLLM
from matrix.llm.wrappers.base import LLMWrapper, OnResult

_LEDGER = threading.RLock()


@dataclass
class RoleLedger:
    """What one role spent (`usage`) and, added at the same time, what the whole run spent
    (`run_usage`, shared by every role of a `Roles`). `on_batch` runs after every batch
    (`Roles` writes its spend file there)."""

    usage: Usage = field(default_factory=Usage)
    run_usage: Usage = field(default_factory=Usage)
    prices: Prices = field(default_factory=Prices)
    on_batch: Callable[[], None] | None = None

    def paid(self, completions: Sequence[Completion]) -> None:
        """Rows the backend answered: calls, tokens and their cost."""
        with _LEDGER:
            for u in (self.usage, self.run_usage):
                u.add_calls(completions, self.prices)

    def cache_hits(self, n: int) -> None:
        with _LEDGER:
            for u in (self.usage, self.run_usage):
                u.cache_hits += n

    def batch(self, n_requests: int, seconds: float) -> None:
        """One batch asked of the role: requests, batch size and time."""
        with _LEDGER:
            for u in (self.usage, self.run_usage):
                u.requests += n_requests
                u.batches += 1
                u.max_batch = max(u.max_batch, n_requests)
                u.seconds += seconds
            if self.on_batch is not None:
                self.on_batch()


class _LedgerWriter(LLMWrapper):
    def __init__(self, inner: StreamingLLM, ledger: RoleLedger):
        super().__init__(inner)
        self.ledger = ledger


class CountedLLM(_LedgerWriter):
    """Counts every batch in `ledger` once it ends, failed or not."""

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        t0 = time.perf_counter()
        try:
            return self.inner.generate_streaming(chats, sampling, on_result)
        finally:
            self.ledger.batch(len(chats), time.perf_counter() - t0)


class PaidLLM(_LedgerWriter):
    """Books each row in `ledger` as it is reported from below, before passing it up."""

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        def book(j: int, c: Completion) -> None:
            self.ledger.paid([c])
            on_result(j, c)

        return self.inner.generate_streaming(chats, sampling, book)
