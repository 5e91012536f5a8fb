"""Who observes which action: the paper's structured communication and its two ablations.

- structured: each group's modulator (an LLM role) sees, once per step, all of its members'
  actions together with the group's description, its memory of earlier scenarios, its
  members' goals and the news other groups sent it, and decides for each item which members
  become aware of it (intra-group routing, one `LABEL: [ids], reason` line per item). It also
  decides which other groups should hear of its group's events (inter-group routing, chosen
  from the other groups' descriptions with its memory in view); those events wait in the
  receiving group's `inbound` queue until that group's modulator routes them to its own
  members at its next step.
- random: each action reaches a random set of agents from the whole population.
- none: agents act alone; nobody observes anybody.

All three share one interface (`Communication`, here with the two ablations), so the engine
does not know which one runs; the structured mode is `matrix.sim.modulator`, and
`matrix.sim.run.build_communication` picks one from `communication.mode`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from matrix.sim.schemas import Agent


@dataclass(frozen=True)
class Decision:
    observers: tuple[int, ...]  # agent indices
    how: str  # modulator | retry | fallback | random | none | alone
    reason: str = ""


@dataclass
class Group:
    id: int
    members: list[int]
    description: str = ""
    # The group's recent scenario summaries (newest last): the modulator's memory, shown in
    # its routing and inter-group prompts.
    memory: list[str] = field(default_factory=list)
    # Events other groups forwarded here, waiting for this group's modulator to route them to
    # its members at its next step: {"group", "agent", "name", "action", "round"}.
    inbound: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    """An event from another group, routed by the receiving group's modulator."""

    group: int  # the receiving group
    source_group: int
    agent: int  # who acted, in the source group
    name: str
    action: str
    observers: tuple[int, ...]
    how: str
    reason: str = ""


@dataclass(frozen=True)
class Routing:
    """One step's routing: a decision per own action, and the delivered inbound events."""

    decisions: dict[int, Decision]
    deliveries: list[Delivery] = field(default_factory=list)


def members_text(group: Group, agents: Sequence[Agent], chars: int = 120) -> str:
    """Numbered members with a profile excerpt (group descriptions)."""
    return "\n".join(
        f"{local}: {agents[i].name} - {agents[i].profile.describe(chars)}"
        for local, i in enumerate(group.members)
    )


class Communication:
    mode = "base"

    def route(
        self,
        round_: int,
        actions: Mapping[int, str],
        agents: Sequence[Agent],
        groups: Sequence[Group],
    ) -> Routing:
        raise NotImplementedError

    def inter_group(
        self,
        round_events: Mapping[int, list[int]],
        actions: Mapping[int, str],
        agents: Sequence[Agent],
        groups: Sequence[Group],
    ) -> dict[int, tuple[int, ...]]:
        """Group id -> ids of the other groups that hear of its events this round.
        `round_events` maps a group to the agents that acted in it this round."""
        return {}


class NoCommunication(Communication):
    mode = "none"

    def route(self, round_, actions, agents, groups):
        return Routing({i: Decision((), "none") for i in actions})


class RandomCommunication(Communication):
    """Random recipients from the whole population, as many as a group could hold."""

    mode = "random"

    def __init__(self, seed: int, max_recipients: int):
        self.seed = seed
        self.max_recipients = max(1, max_recipients)

    def route(self, round_, actions, agents, groups):
        rng = random.Random(f"{self.seed}:{round_}")  # per round, so a resumed run draws the same
        out = {}
        for i in sorted(actions):
            others = [j for j in range(len(agents)) if j != i]
            k = rng.randint(1, min(self.max_recipients, len(others))) if others else 0
            out[i] = Decision(tuple(sorted(rng.sample(others, k))), "random")
        return Routing(out)
