"""What a group's modulator sees: the caps on its prompt and answers (communication.* in conf)
and the texts of its members' goals and of the group's memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.sim.communication import Group
from matrix.sim.routing_schema import RoutingAnswers
from matrix.sim.schemas import Agent


@dataclass(frozen=True)
class ModulatorLimits:
    """Caps on what a modulator prompt shows and receives (communication.* in conf)."""

    goal_chars: int = 200  # each member's goal, as shown to the modulator
    memory_size: int = 3  # scenario summaries a group remembers
    inbound_max: int = 6  # events from other groups queued for one modulator step
    candidates: int = 8  # most similar other groups offered for inter-group routing
    unparsed: str = "broadcast"  # an item with no usable answer after the retry: broadcast | nobody
    answers: RoutingAnswers = RoutingAnswers()  # JSON or lines, and their token budget


def modulator_limits(cfg: Mapping) -> ModulatorLimits:
    return ModulatorLimits(
        goal_chars=int(cfg["goal_chars"]),
        memory_size=int(cfg["memory_size"]),
        inbound_max=int(cfg["inbound_max"]),
        candidates=int(cfg["inter_group_candidates"]),
        unparsed=str(cfg["unparsed"]),
        answers=RoutingAnswers.from_config(cfg),
    )


def members_goals_text(group: Group, agents: Sequence[Agent], chars: int) -> str:
    """Numbered members with their goals (what a modulator routes by)."""
    return "\n".join(
        f"{local}: {agents[i].name} - goal: {agents[i].goal[:chars] or '(unknown)'}"
        for local, i in enumerate(group.members)
    )


def memory_text(group: Group) -> str:
    return "\n".join(f"- {m}" for m in group.memory) or "(nothing yet)"
