"""The simulation engine's typed settings (`SimConfig`): each field is filled from
`simulation.<its name>` unless its metadata names another key, so a new option is one YAML
line and one field here."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _key(path: str) -> Any:
    return field(metadata={"key": path})


@dataclass
class SimConfig:
    """The engine's typed settings. Each field is filled from `simulation.<its name>` unless
    its metadata names another key (`SimConfig.from_cfg`): a new option is one YAML line and
    one field here."""

    max_rounds: int
    target_scenarios: int | None
    interval: int = _key("scenario.interval")
    flush_partial: bool = _key("scenario.flush_partial")
    memory_max_items: int = _key("simulation.memory.max_items")
    memory_keep: int = _key("simulation.memory.keep")
    revise_plan_every: int
    goal_check_every: int
    inbox_max: int
    seed: int = _key("seed")
    # scenario summaries each modulator remembers
    group_memory: int = _key("communication.memory_size")
    # events queued for one modulator step
    inbound_max: int = _key("communication.inbound_max")
    # profile excerpt per participant in the summarizer prompt
    scenario_profile_chars: int = _key("scenario.profile_chars")
    schedule: str  # lockstep | groups

    @classmethod
    def from_cfg(cls, cfg: Any) -> SimConfig:
        from omegaconf import OmegaConf

        cast = {"int": int, "bool": bool, "str": str}
        values = {}
        for f in fields(cls):
            v = OmegaConf.select(cfg, f.metadata.get("key", f"simulation.{f.name}"))
            values[f.name] = v if v is None else cast.get(str(f.type), lambda x: x)(v)
        return cls(**values)
