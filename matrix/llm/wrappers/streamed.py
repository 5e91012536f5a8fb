"""The streaming pass-through: whatever the backend below does (report rows as they arrive,
or only return the batch), the layer above hears every row exactly once, and a backend that
returns the wrong number of completions is an error, not a silent misalignment."""

from __future__ import annotations

from collections.abc import Sequence

from matrix.llm.protocol import Chat, Completion, Sampling
from matrix.llm.wrappers.base import LLMWrapper, OnResult


class StreamedLLM(LLMWrapper):
    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        reported: set[int] = set()

        def report(j: int, c: Completion) -> None:
            reported.add(j)
            on_result(j, c)

        result = self.inner.generate_streaming(chats, sampling, report)
        if len(result) != len(chats):
            raise RuntimeError(
                f"backend {self.name} returned {len(result)} completions for {len(chats)} chats"
            )
        for j, c in enumerate(result):
            if j not in reported:
                on_result(j, c)
        return result
