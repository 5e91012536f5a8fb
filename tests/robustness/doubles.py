"""An LLM double whose answer depends only on its prompt: batch composition, batch size and
order cannot change a row, so sharded and unsharded runs are comparable row for row."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from matrix.llm.protocol import Completion

WORDS = [
    "garden",
    "budget",
    "neighbours",
    "parking",
    "train",
    "bus",
    "python",
    "script",
    "rumour",
    "election",
    "meal",
    "plan",
    "interest",
    "landlord",
    "stretches",
    "children",
    "interview",
]


class PromptHashLLM:
    name = "prompt-hash"

    def generate(self, chats: Sequence, sampling) -> list[Completion]:
        out = []
        for chat in chats:
            h = hashlib.sha256(repr(chat).encode()).digest()
            words = [WORDS[b % len(WORDS)] for b in h[:12]]
            text = f"[{h[0] % 3}, {h[1] % 3}] " + " ".join(words).capitalize() + "."
            out.append(
                Completion(text=text, prompt_tokens=10, completion_tokens=12, model=self.name)
            )
        return out
