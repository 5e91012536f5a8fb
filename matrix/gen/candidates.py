"""A candidate row between synthesis and filtering, and its on-disk row formats.

SFT rows: {id, messages, set, domain, lineage} with OpenAI-style messages (possibly several
user/assistant turns). DPO rows: {id, prompt (list of messages), chosen, rejected, set,
domain, lineage}, chosen and rejected being assistant strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matrix.gen.inputs import Seed
from matrix.llm.protocol import Message


@dataclass
class Candidate:
    id: str
    seed: Seed
    kind: str  # "sft" | "dpo"
    messages: list[Message] = field(default_factory=list)  # sft: the chat; dpo: prompt + chosen
    rejected: str | None = None
    truncated: bool = False  # some text it trains on was cut by max_new_tokens
    problem: str | None = None  # set during synthesis: "empty" | "unparseable"

    @property
    def instruction(self) -> str:
        """The first user message: what dedup and diversity statistics look at."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def chosen(self) -> str | None:
        return (
            self.messages[-1]["content"]
            if self.kind == "dpo" and self.messages and self.messages[-1]["role"] == "assistant"
            else None
        )

    def assistant_texts(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    def user_texts(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]

    def to_row(self, set_name: str, domain: str, lineage: dict[str, Any]) -> dict[str, Any]:
        base = {"id": self.id, "set": set_name, "domain": domain}
        if self.kind == "sft":
            return {**base, "messages": self.messages, "lineage": lineage}
        prompt = self.messages[:-1]
        return {
            **base,
            "prompt": prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "lineage": lineage,
        }


def row_instruction(row: dict[str, Any]) -> str:
    """First user message of an SFT or DPO row on disk."""
    msgs = row.get("messages") or row.get("prompt") or []
    return next((m["content"] for m in msgs if m["role"] == "user"), "")


def row_responses(row: dict[str, Any]) -> list[str]:
    if "messages" in row:
        return [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    return [row["chosen"]]
