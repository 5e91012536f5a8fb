"""Request slots shared by every call to one server, handed out in priority order.

An OpenAI-compatible backend caps the requests it has in flight (`max_concurrency`, process
wide: several threads each run their own event loop). When more are waiting than slots are
free, the order in which they get a slot decides what the server works on next: the
`groups` schedule of the simulator (matrix.sim.scheduler) marks each request with its
(round, phase) through `request_priority`, and the lowest mark waiting gets the next free
slot, so a group's critical path is not stuck behind long answers that can wait. With
`max_concurrency` equal to the server's own batch size (vLLM's `max_num_seqs`), the server
never queues, and this order is the order the server runs them in. Requests without a mark
come first, then marks ascending, first come first served within one.

Hand-written because neither asyncio nor threading offers a semaphore that is shared between
event loops of different threads and wakes waiters by priority; a waiter is woken through its
own loop (`call_soon_threadsafe`) instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterator
from contextvars import ContextVar

_PRIORITY: ContextVar[int | None] = ContextVar("matrix_request_priority", default=None)


@contextlib.contextmanager
def request_priority(priority: int | None) -> Iterator[None]:
    """Requests sent inside this block (in this thread) wait for a slot with `priority`:
    lower goes first."""
    token = _PRIORITY.set(priority)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def current_priority() -> int | None:
    return _PRIORITY.get()


class PrioritySlots:
    """`capacity` slots; `acquire(priority)` waits (async, in any thread's loop) until one is
    free and no waiter with a lower priority is ahead of it."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # heap: (priority, seq, fut)
        self._seq = itertools.count()

    @property
    def free(self) -> int:
        return self._free

    async def acquire(self, priority: int | None = None) -> None:
        rank = -1 if priority is None else int(priority)
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            fut = loop.create_future()
            heapq.heappush(self._waiters, (rank, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                handed = fut.done() and not fut.cancelled()
            if handed:  # the slot reached us as we were cancelled: pass it on
                self.release()
            raise

    def set_capacity(self, capacity: int) -> None:
        """Grow or shrink to `capacity` slots (endpoints going down or up); slots taken past
        a smaller capacity are not handed on when they are released."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        with self._lock:
            self._free += capacity - self.capacity
            self.capacity = capacity
            extra = max(0, self._free)
            self._free -= extra
        for _ in range(extra):
            self.release()

    def release(self) -> None:
        with self._lock:
            if self._free < 0:  # taken past a capacity that has shrunk since
                self._free += 1
                return
            while self._waiters:
                _, _, fut = heapq.heappop(self._waiters)
                if fut.done():  # cancelled while waiting
                    continue
                fut.get_loop().call_soon_threadsafe(_hand_over, fut, self)
                return
            self._free += 1


def _hand_over(fut: asyncio.Future, slots: PrioritySlots) -> None:
    """In the waiter's loop: give it the slot, or pass the slot on if it stopped waiting."""
    if fut.done():
        slots.release()
    else:
        fut.set_result(None)
