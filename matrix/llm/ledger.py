"""What LLM calls cost: a per-role ledger and a per-run budget.

The ledger counts requests, backend calls, cache hits, tokens and estimated cost (prices per
1M tokens, set per backend in config). The budget is checked *before* a batch goes out, from
an upper-bound estimate of its tokens, so a run stops with `BudgetExhausted` instead of
overspending; what was answered before the stop sits in the call cache for the resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from matrix.llm.errors import BudgetExhausted
from matrix.llm.protocol import Chat, Completion

# Without a tokenizer, ~4 characters per token is the usual English estimate; rounding up and
# adding the chat-template overhead per message keeps the estimate on the safe side.
CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS_PER_MESSAGE = 8


def estimate_prompt_tokens(chat: Chat) -> int:
    chars = sum(len(m.get("content") or "") for m in chat)
    return -(-chars // CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * len(chat)


@dataclass(frozen=True)
class Prices:
    """US dollars per 1M tokens."""

    prompt: float = 0.0
    completion: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


@dataclass
class Usage:
    requests: int = 0  # rows asked for by the role
    calls: int = 0  # rows sent to the backend (requests minus cache hits)
    cache_hits: int = 0
    batches: int = 0
    prompt_tokens: int = 0  # tokens paid for (cache hits are free)
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    max_batch: int = 0

    def add_calls(self, completions: Sequence[Completion], prices: Prices) -> None:
        self.calls += len(completions)
        p = sum(c.prompt_tokens for c in completions)
        c = sum(c.completion_tokens for c in completions)
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cost += prices.cost(p, c)

    def merge(self, other: Usage) -> None:
        for f in fields(self):
            if f.name == "max_batch":
                self.max_batch = max(self.max_batch, other.max_batch)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, float]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["cost"] = round(self.cost, 6)
        d["seconds"] = round(self.seconds, 3)
        d["tokens"] = self.tokens
        return d


@dataclass
class Budget:
    """Caps for one run (one `Roles`); None means no cap."""

    max_tokens: int | None = None
    max_cost: float | None = None

    def check(self, spent: Usage, next_tokens: int, next_cost: float, role: str) -> None:
        """Raise BudgetExhausted if a call of this size would go past a cap."""
        over = []
        if self.max_tokens is not None and spent.tokens + next_tokens > self.max_tokens:
            over.append(
                f"tokens: {spent.tokens} spent + ~{next_tokens} next > llm.budget.max_tokens="
                f"{self.max_tokens}"
            )
        if self.max_cost is not None and spent.cost + next_cost > self.max_cost:
            over.append(
                f"cost: ${spent.cost:.4f} spent + ~${next_cost:.4f} next > "
                f"llm.budget.max_cost={self.max_cost}"
            )
        if over:
            raise BudgetExhausted(
                f"role '{role}': the next call would exceed the run's LLM budget ("
                + "; ".join(over)
                + "). Answers so far are cached: raise the budget and rerun to resume.",
                spent={"tokens": spent.tokens, "cost": round(spent.cost, 6)},
                limit={"max_tokens": self.max_tokens, "max_cost": self.max_cost},
            )


@dataclass
class EndpointUsage:
    """What one endpoint of an OpenAI-compatible backend did (matrix.llm.endpoints)."""

    requests: int = 0  # HTTP requests sent to it (every try of every row)
    answered: int = 0  # rows it answered
    prompt_tokens: int = 0  # tokens of the rows it answered
    completion_tokens: int = 0
    failures: int = 0  # requests that failed (retried, moved, or given up)
    moved: int = 0  # rows moved from it to another endpoint
    down: int = 0  # times it was marked down

    def merge(self, other: EndpointUsage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: EndpointUsage) -> EndpointUsage:
        return EndpointUsage(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def endpoint_lines(ledger: dict) -> list[str]:
    """One line per endpoint of a `Roles.ledger()` (empty when no backend has endpoints)."""
    return [
        f"LLM endpoint {url}: {u['answered']} rows answered of {u['requests']} requests, "
        f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, "
        f"{u['failures']} failed requests, {u['moved']} rows moved away, down {u['down']} times"
        for url, u in (ledger.get("endpoints") or {}).items()
    ]
