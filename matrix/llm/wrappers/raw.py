"""Raw text completion through the same stack as chats. A raw prompt travels as a one-message
chat of role "raw" (`raw_chat`), so the call cache keys it by model, prompt and sampling and
apart from any chat, the budget estimates it and the ledger counts it like any row; at the
bottom `RawPrompts` hands the prompts to the backend's `complete`
(`matrix.llm.protocol.RawCompleter`), reporting each row as it arrives where the backend can."""

from __future__ import annotations

from collections.abc import Sequence

from matrix.llm.protocol import Chat, Completion, RawCompleter, Sampling
from matrix.llm.wrappers.base import OnResult

RAW_ROLE = "raw"


def raw_chat(prompt: str) -> Chat:
    return [{"role": RAW_ROLE, "content": prompt}]


def raw_prompt(chat: Chat) -> str:
    if len(chat) != 1 or chat[0].get("role") != RAW_ROLE:
        raise ValueError(f"not a raw prompt (a one-message chat of role {RAW_ROLE!r}): {chat!r}")
    return chat[0]["content"]


class RawPrompts:
    """A `RawCompleter` backend as the `StreamingLLM` of raw chats: the bottom of a role's raw
    stack (`matrix.llm.role_llm.build_role_llm`)."""

    def __init__(self, backend: RawCompleter):
        self.backend = backend
        self.concurrent_calls = getattr(backend, "concurrent_calls", False)

    @property
    def name(self) -> str:
        return self.backend.name  # type: ignore[attr-defined]

    def generate(self, chats: Sequence[Chat], sampling: Sampling) -> list[Completion]:
        return self.backend.complete([raw_prompt(c) for c in chats], sampling)

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        streaming = getattr(self.backend, "complete_streaming", None)
        if streaming is None:  # StreamedLLM above reports the rows once the batch is back
            return self.generate(chats, sampling)
        return streaming([raw_prompt(c) for c in chats], sampling, on_result)
