"""What a simulation carries from round to round (`SimState`), and its JSON form: state.json,
the commit point a killed run resumes from (see `matrix.sim.engine`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from matrix.sim.communication import Group
from matrix.sim.schemas import Agent


@dataclass
class SimState:
    round: int = 0
    agents: list[Agent] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    buffers: dict[int, list[dict]] = field(default_factory=dict)  # group -> raw steps
    n_events: int = 0
    n_scenarios: int = 0
    stopped: str | None = None

    def to_json(self) -> dict:
        return {
            "round": self.round,
            "agents": [a.to_row() for a in self.agents],
            "groups": [asdict(g) for g in self.groups],
            "buffers": {str(k): v for k, v in self.buffers.items()},
            "n_events": self.n_events,
            "n_scenarios": self.n_scenarios,
            "stopped": self.stopped,
        }

    @classmethod
    def from_json(cls, d: dict) -> SimState:
        return cls(
            round=d["round"],
            agents=[Agent.from_row(a) for a in d["agents"]],
            groups=[Group(**g) for g in d["groups"]],
            buffers={int(k): v for k, v in d["buffers"].items()},
            n_events=d["n_events"],
            n_scenarios=d["n_scenarios"],
            stopped=d.get("stopped"),
        )
