"""The budget wrapper: sends the longest run of rows that fits the run's token/cost cap
(estimated from the prompt size and max_new_tokens), so the rows paid for are kept (cached)
and the stage stops with `BudgetExhausted` before the first row that would go past the cap.
Without a cap the batch goes down whole."""

from __future__ import annotations

from collections.abc import Sequence

from matrix.llm.errors import BudgetExhausted
from matrix.llm.ledger import Budget, Prices, Usage, estimate_prompt_tokens
from matrix.llm.protocol import Chat, Completion, Sampling, StreamingLLM
from matrix.llm.wrappers.base import LLMWrapper, OnResult, send_subset


class BudgetedLLM(LLMWrapper):
    """Checks `budget` against `spent` (the run's usage, which the ledger below keeps
    current), pricing rows at `prices`; `role` names the caller in the error."""

    def __init__(
        self, inner: StreamingLLM, budget: Budget, spent: Usage, prices: Prices, role: str
    ):
        super().__init__(inner)
        self.budget, self.spent, self.prices, self.role = budget, spent, prices, role

    def generate_streaming(
        self, chats: Sequence[Chat], sampling: Sampling, on_result: OnResult
    ) -> list[Completion]:
        out: list[Completion] = []
        n = sampling.max_new_tokens
        while len(out) < len(chats):
            start, fit, est_p, est_c = len(out), 0, 0, 0
            for chat in chats[start:]:
                p = estimate_prompt_tokens(chat)
                if not self._fits(est_p + p, est_c + n):
                    break
                est_p, est_c, fit = est_p + p, est_c + n, fit + 1
            if fit == 0:  # raises: not even the next row fits
                p = estimate_prompt_tokens(chats[start])
                self._check(p, n)
            rows = list(range(start, start + fit))
            out += send_subset(self.inner, chats, rows, sampling, on_result)
        return out

    def _check(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.budget.check(
            self.spent,
            prompt_tokens + completion_tokens,
            self.prices.cost(prompt_tokens, completion_tokens),
            self.role,
        )

    def _fits(self, prompt_tokens: int, completion_tokens: int) -> bool:
        try:
            self._check(prompt_tokens, completion_tokens)
        except BudgetExhausted:
            return False
        return True
