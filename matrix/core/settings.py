"""The typed schema of the keys every stage shares (`run`, `paths`, `shard`, `seed`) and of
the `llm` block the LLM stages read. A stage's own schema subclasses `Shared` or
`LLMStage` (matrix.core.registry names it: `Stage.schema_ref`); the config check
(matrix.core.value_check.check_schemas) checks the composed config against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from matrix.common.schema import Count, Natural, Range, required
from matrix.llm.protocol import Sampling


@dataclass(frozen=True)
class Run:
    name: str
    sweep_id: str | int | None = None
    stage_dirs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Paths:
    runs_dir: str
    cache_dir: str


@dataclass(frozen=True)
class ShardSettings:
    index: Natural = 0
    count: Count = 1

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        if block.get("index", 0) < block.get("count", 1):
            return []
        return [("index", f"{block['index']} must be in [0, shard.count={block['count']})")]


@dataclass(frozen=True)
class Shared:
    """Keys every stage reads."""

    run: Run
    paths: Paths
    shard: ShardSettings
    seed: int


@dataclass(frozen=True)
class Prompt:
    """A chat prompt; its {fields} are checked when the template is rendered."""

    user: str
    system: str | None = None


@dataclass(frozen=True)
class Role(Sampling):
    """`llm.roles.<name>`: its backend and its sampling defaults (Sampling's fields)."""

    backend: str = required()


@dataclass(frozen=True)
class Budget:
    max_tokens: Count | None = None
    max_cost: Annotated[float, Range(0, open_min=True)] | None = None


@dataclass(frozen=True)
class Preflight:
    enabled: bool = True
    timeout: Annotated[float, Range(0, open_min=True)] = 10


@dataclass(frozen=True)
class Llm:
    roles: dict[str, Role]
    # each backend block is checked against its class's constructor (check_components)
    backends: dict[str, Any]
    budget: Budget = Budget()
    preflight: Preflight = Preflight()


@dataclass(frozen=True)
class LLMStage(Shared):
    """Keys every stage that calls an LLM reads."""

    llm: Llm
