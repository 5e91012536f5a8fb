"""Which slice of a stage's work one shard owns, and where it writes.

`shard.count` independent jobs (a Slurm array, `-m hydra/launcher=submitit_local`, or plain
processes) each run one `shard.index`. Ownership is a fixed modulo rule, so it needs no
coordination and is the same on every host:

- simulate: the groups with `group id % count == index` (agents of other groups never act);
- evaluate: the benchmark items at positions `i % count == index`.

A shard writes to `<stage dir>/shards/<index>-of-<count>/` with its own manifest;
`python -m matrix.merge <stage> run.name=...` joins the shards into `<stage dir>/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

T = TypeVar("T")
# Stages that know how to split their work (generate and train run whole).
SHARDED_STAGES = ("simulate", "evaluate")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def from_cfg(cls, cfg: DictConfig | dict[str, Any]) -> Shard:
        s = cfg.get("shard") or {}
        return cls(int(s.get("index", 0)), int(s.get("count", 1)))

    @property
    def active(self) -> bool:
        return self.count > 1

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def owns(self, key: int) -> bool:
        return key % self.count == self.index

    def slice(self, items: Sequence[T]) -> list[T]:
        return [x for i, x in enumerate(items) if self.owns(i)]

    def dir(self, stage_dir: Path) -> Path:
        return stage_dir / "shards" / self.name if self.active else stage_dir
