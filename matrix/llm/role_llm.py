"""A role's LLM: the backend a role names, with the role's default sampling, wrapped in the
stack every role shares (see `matrix.llm.wrappers`): batch ledger, call cache, budget, row
ledger, streaming pass-through, one-call-at-a-time. `build_role_llm` is the one place that
stacks them; `Roles` calls it for each configured role.

Stages only ever call `role.generate(chats, **overrides)`, or `complete(prompts)` for raw text
(Magpie-style sampling), which goes through the same stack over the backend's `complete`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from matrix.llm.cache import CallCache
from matrix.llm.ledger import Budget, Prices, Usage
from matrix.llm.protocol import LLM, Chat, Completion, RawCompleter, Sampling, StreamingLLM
from matrix.llm.wrappers.budgeted import BudgetedLLM
from matrix.llm.wrappers.cached import CachedLLM
from matrix.llm.wrappers.ledgered import CountedLLM, PaidLLM, RoleLedger
from matrix.llm.wrappers.raw import RawPrompts, raw_chat
from matrix.llm.wrappers.serialized import SerializedLLM
from matrix.llm.wrappers.streamed import StreamedLLM

SAMPLING_KEYS = frozenset(f.name for f in fields(Sampling))


@dataclass
class RoleLLM:
    """The LLM of one role: `llm` is the wrapped stack over `backend`, `raw_llm` the same stack
    over its raw-text completion (None when the backend has none), `ledger` what the role
    spent (with the run's totals it shares with the other roles)."""

    role: str
    backend: LLM
    sampling: Sampling
    llm: StreamingLLM
    ledger: RoleLedger
    raw_llm: StreamingLLM | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def usage(self) -> Usage:
        return self.ledger.usage

    @property
    def prices(self) -> Prices:
        return self.ledger.prices

    def sampling_for(self, **overrides: Any) -> Sampling:
        unknown = set(overrides) - SAMPLING_KEYS
        if unknown:
            raise TypeError(
                f"unknown sampling fields {sorted(unknown)}; known: {sorted(SAMPLING_KEYS)}"
            )
        if "stop" in overrides:
            overrides["stop"] = tuple(overrides["stop"] or ())
        return replace(self.sampling, **overrides)

    def generate(self, chats: Sequence[Chat], **overrides: Any) -> list[Completion]:
        """Complete a batch of chats; keyword overrides replace the role's sampling fields."""
        if not chats:
            return []
        return self.llm.generate(list(chats), self.sampling_for(**overrides))

    def _raw(self) -> RawCompleter:
        if not isinstance(self.backend, RawCompleter):
            raise TypeError(
                f"llm.roles.{self.role}: backend {self.name} cannot continue raw text "
                "(needed by Magpie-style sampling); use an hf backend, or an openai backend "
                "with a tokenizer, for this role"
            )
        return self.backend

    def pre_query_prefix(self) -> str:
        return self._raw().pre_query_prefix()

    def complete(self, prompts: Sequence[str], **overrides: Any) -> list[Completion]:
        """Continue raw text prompts (no chat template): cached, budgeted and counted like
        `generate`, with the same sampling rules."""
        if not prompts:
            return []
        self._raw()  # names the role when its backend cannot
        assert self.raw_llm is not None
        return self.raw_llm.generate([raw_chat(p) for p in prompts], self.sampling_for(**overrides))


def build_role_llm(
    role: str,
    backend: LLM,
    sampling: Sampling,
    *,
    ledger: RoleLedger | None = None,
    cache: CallCache | None = None,
    budget: Budget | None = None,
) -> RoleLLM:
    """Stack the wrappers over `backend` for `role`. Without a cache, rows go straight to the
    budget check; without a budget nothing is capped; without a ledger the role counts alone."""
    ledger = ledger or RoleLedger()

    def stack(bottom: LLM) -> StreamingLLM:
        llm: StreamingLLM = PaidLLM(StreamedLLM(SerializedLLM(bottom, lock_of=backend)), ledger)
        llm = BudgetedLLM(llm, budget or Budget(), ledger.run_usage, ledger.prices, role)
        if cache is not None:
            llm = CachedLLM(llm, cache, on_hits=ledger.cache_hits)
        return CountedLLM(llm, ledger)

    raw = stack(RawPrompts(backend)) if isinstance(backend, RawCompleter) else None
    return RoleLLM(role, backend, sampling, stack(backend), ledger, raw)
