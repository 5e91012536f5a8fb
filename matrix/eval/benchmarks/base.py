"""The interface every benchmark implements.

    items = bench.load()                      # questions, each with a unique "id"
    answers = bench.answer(model, items)      # {"id", "turns": [answer text per turn], ...}
    judgments = bench.judge(judge, items, answers)   # {"id", ...} (LLM judge or code execution)
    scores = bench.score(items, answers, judgments)  # flat dict of metrics (+ CIs)

The evaluate stage caches answers and judgments as JSONL keyed by id, so each step only sees
the items it has not done yet. `model` and `judge` are role LLMs (`generate(chats, **sampling)`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

Record = dict[str, Any]


class Benchmark:
    name: ClassVar[str]
    uses_judge: ClassVar[bool] = True

    def __init__(self, cfg: DictConfig | dict | None = None):
        self.cfg = OmegaConf.create(cfg or {})

    def opt(self, key: str, default: Any) -> Any:
        value = self.cfg.get(key, default)
        return default if value is None else value

    def limit(self, items: list[Record]) -> list[Record]:
        n = self.opt("limit", None)
        return items[: int(n)] if n else items

    def load(self) -> list[Record]:
        raise NotImplementedError

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        raise NotImplementedError

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        raise NotImplementedError

    def score(
        self, items: list[Record], answers: list[Record], judgments: list[Record]
    ) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def config_errors(cls, bcfg: DictConfig, cfg: DictConfig) -> list[str]:
        """Errors in this benchmark's settings `bcfg` (whole config `cfg`), found before any
        model is loaded; none by default."""
        return []

    def bind_roles(self, roles: Any) -> None:
        """Called by the evaluate stage with the llm roles, for a benchmark that asks a role
        other than the judge (a baseline model); ignored by default."""

    def judge_calls(self, n_items: int) -> int:
        """Judge LLM calls for `n_items` items without retries (documented cost)."""
        return n_items if self.uses_judge else 0


def single_turn(model: Any, prompts: list[str], **sampling: Any) -> list[str]:
    outs = model.generate([[{"role": "user", "content": p}] for p in prompts], **sampling)
    return [o.text for o in outs]


def by_id(records: list[Record]) -> dict[Any, Record]:
    return {r["id"]: r for r in records}
