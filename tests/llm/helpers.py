"""Test helpers for the LLM layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matrix.llm.errors import ContextOverflow
from matrix.llm.protocol import Chat, Completion, Sampling


class ScriptedBackend:
    """An in-process backend for testing the wrappers: answers with a function of the chat,
    records every batch it receives, and can fail at a given row."""

    def __init__(
        self,
        answer: Callable[[Chat, Sampling], str] | None = None,
        name: str = "scripted",
        streams: bool = False,
        fail_at: int | None = None,
        max_prompt_chars: int | None = None,
    ):
        self.answer = answer or (lambda chat, s: "echo: " + chat[-1]["content"])
        self._name = name
        self.streams_results = streams
        self.fail_at = fail_at
        self.max_prompt_chars = max_prompt_chars
        self.batches: list[list[Chat]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def rows_sent(self) -> int:
        return sum(len(b) for b in self.batches)

    def generate(self, chats: Sequence[Chat], sampling: Sampling, on_result=None):
        self.batches.append(list(chats))
        out = []
        for i, chat in enumerate(chats):
            size = sum(len(m["content"]) for m in chat)
            if self.max_prompt_chars is not None and size > self.max_prompt_chars:
                raise ContextOverflow(f"row {i}: too long", row=i)
            if self.fail_at is not None and i == self.fail_at:
                raise ConnectionError("backend died")
            text = self.answer(chat, sampling)
            c = Completion(text, prompt_tokens=size // 4 + 1, completion_tokens=len(text) // 4 + 1)
            if on_result is not None:
                on_result(i, c)
            out.append(c)
        return out


def chats_of(*questions: str) -> list[Chat]:
    return [[{"role": "user", "content": q}] for q in questions]
