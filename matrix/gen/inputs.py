"""The generate stage's input: a simulate output folder (scenarios + agents) turned into seeds.

A seed is what one candidate row is grounded in: a scenario and one of its participants
(source `simulation`), a persona alone (`persona`), or nothing (`magpie`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.common.io import read_json, read_jsonl


@dataclass(frozen=True)
class SimulationData:
    dir: Path
    scenarios: list[dict]
    agents: dict[int, dict]  # agent index -> agents.jsonl row
    agents_file: Path


def load_simulation(sim_dir: str | Path) -> SimulationData:
    """Scenarios and agents of a simulate run.

    agents.jsonl is written when a simulation finishes; a run that was stopped early still
    has its agents in state.json, which is used instead so partial simulations are usable.
    """
    d = Path(sim_dir)
    scenarios = read_jsonl(d / "scenarios.jsonl")
    if (d / "agents.jsonl").exists():
        agents_file, rows = d / "agents.jsonl", read_jsonl(d / "agents.jsonl")
    elif (d / "state.json").exists():
        agents_file, rows = d / "state.json", read_json(d / "state.json")["agents"]
    else:
        raise FileNotFoundError(
            f"{d}: neither agents.jsonl nor state.json; is this a simulate output folder?"
        )
    return SimulationData(d, scenarios, {int(a["index"]): a for a in rows}, agents_file)


@dataclass(frozen=True)
class Seed:
    """What one candidate row is written from; `key` identifies it across rounds."""

    key: str
    scenario: dict | None = None
    agent: dict | None = None
    others: tuple[str, ...] = field(default_factory=tuple)

    def lineage(self) -> dict[str, Any]:
        a = self.agent
        return {
            "scenario_ids": [self.scenario["id"]] if self.scenario else [],
            "agent_ids": [a["profile"]["id"]] if a else [],
            "agent_indices": [int(a["index"])] if a else [],
            "agent_names": [a["profile"]["name"]] if a else [],
        }

    def fields(self, max_actions: int, max_action_chars: int) -> dict[str, str]:
        """Values for the instruction templates ({scenario}, {actions}, {name}, ...)."""
        out: dict[str, str] = {}
        if self.agent is not None:
            p = self.agent["profile"]
            persona = p.get("persona") or p.get("bio") or ""
            if p.get("bio") and p["bio"] not in persona:
                persona = f"{p['bio']} {persona}"
            out |= {
                "name": p["name"],
                "persona": persona[:600],
                "goal": self.agent.get("goal") or "",
                "others": ", ".join(self.others) or "nobody else",
            }
        if self.scenario is not None:
            actions = [a[:max_action_chars] for a in self.scenario.get("actions", [])]
            out |= {
                "scenario": self.scenario["summary"],
                "actions": "\n".join(f"- {a}" for a in actions[:max_actions]) or "- (none)",
            }
        return out


def simulation_seeds(
    sim: SimulationData, scenario_idx: list[int], per_scenario: int | None
) -> list[Seed]:
    """(scenario, participant) pairs, scenario by scenario in retrieval order."""
    seeds = []
    for i in scenario_idx:
        s = sim.scenarios[i]
        people = [p for p in s["participants"] if int(p) in sim.agents]
        for p in people[:per_scenario]:
            agent = sim.agents[int(p)]
            others = tuple(sim.agents[int(o)]["profile"]["name"] for o in people if o != p)
            seeds.append(Seed(f"{s['id']}/a{int(p)}", s, agent, others))
    return seeds


def persona_seeds(sim: SimulationData) -> list[Seed]:
    return [Seed(f"a{i}", None, a) for i, a in sorted(sim.agents.items())]
