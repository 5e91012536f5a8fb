"""The common shape of an LLM wrapper: it holds the next LLM down and is itself a
`StreamingLLM` (and so an `LLM`: `generate` is `generate_streaming` without a listener)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matrix.llm.errors import ContextOverflow
from matrix.llm.protocol import Chat, Completion, Sampling, StreamingLLM

OnResult = Callable[[int, Completion], None]


def ignore_result(index: int, completion: Completion) -> None:
    """The listener of a plain `generate` call."""


class LLMWrapper:
    """Wraps `inner` (a `StreamingLLM`); subclasses override `generate_streaming`."""

    def __init__(self, inner: StreamingLLM):
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def generate(self, chats: Sequence[Chat], sampling: Sampling) -> list[Completion]:
        return self.generate_streaming(chats, sampling, ignore_result)

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        return self.inner.generate_streaming(chats, sampling, on_result)


def send_subset(
    inner: StreamingLLM,
    chats: Sequence[Chat],
    rows: list[int],
    sampling: Sampling,
    on_result: OnResult,
) -> list[Completion]:
    """Send `chats[rows]` down: the listener and a `ContextOverflow` get the caller's row
    indices back, not the subset's."""
    try:
        return inner.generate_streaming(
            [chats[i] for i in rows], sampling, lambda j, c: on_result(rows[j], c)
        )
    except ContextOverflow as e:
        raise (e.at_row(rows[e.row]) if e.row is not None else e) from e
