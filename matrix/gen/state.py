"""Resume state of the generate stage: per set, how many rows were accepted and dropped and
how many seeds were used (state.json, written atomically after every step)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from matrix.common.io import read_json, write_json


@dataclass
class SetState:
    rows: int = 0
    seeds_used: int = 0
    steps: int = 0
    surplus: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    # What the committed rows were made with; a resume with other prompts is refused.
    kind: str | None = None
    templates: dict[str, str] = field(default_factory=dict)


@dataclass
class GenState:
    sets: dict[str, SetState] = field(default_factory=dict)
    filtered_rows: int = 0

    @classmethod
    def load(cls, path: Path) -> GenState:
        if not path.exists():
            return cls()
        d = read_json(path)
        return cls({k: SetState(**v) for k, v in d["sets"].items()}, d["filtered_rows"])

    def save(self, path: Path) -> None:
        write_json(
            path,
            {
                "sets": {k: asdict(v) for k, v in self.sets.items()},
                "filtered_rows": self.filtered_rows,
            },
        )


# -- the stage -------------------------------------------------------------------------------
