"""Which slice of a stage's work one shard owns, and where it writes.

`shard.count` independent jobs (a Slurm array, `-m hydra/launcher=submitit_local`, or plain
processes) each run one `shard.index`. Ownership is a fixed modulo rule, so it needs no
coordination and is the same on every host:

- simulate: the groups with `group id % count == index` (agents of other groups never act);
- generate: the scenarios at positions `i % count == index` of scenarios.jsonl (source
  `simulation`; every shard ranks all scenarios by the need, then keeps its own in that
  order), the agents at positions `i % count == index` in agent-index order (source
  `persona`); `magpie` sets have no input to split. Each set's target is split with
  `Shard.share`, row ids and sampling streams are interleaved (`Shard.global_index`), so
  shards never write the same id or draw the same stream;
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

    def share(self, total: int) -> int:
        """This shard's part of a total: `total // count`, plus one for the first
        `total % count` shards, so the parts of all shards add up to `total` exactly."""
        return total // self.count + (1 if self.index < total % self.count else 0)

    def global_index(self, local: int) -> int:
        """The `local`-th item of this shard as a number unique across shards (shard i
        numbers i, i + count, i + 2 count, ...); the identity for an unsharded run."""
        return local * self.count + self.index

    def dir(self, stage_dir: Path) -> Path:
        return stage_dir / "shards" / self.name if self.active else stage_dir
