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
does not know which one runs; the structured mode is `matrix.sim.modulator`. A mode is a
component: `conf/communication/<name>.yaml` names its class by `_target_`, and the stage builds
it with `hydra.utils.instantiate`, handing it one `CommunicationContext` (the population, the
groups, the LLM roles and the `communication` block). What the stage must know about a mode
(the roles it calls, whether it routes across groups, its options' checks) is on the class, so
a new mode is one module and one YAML file.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from hydra.utils import instantiate

from matrix.common.validation import ConfigProblems
from matrix.llm.role_llm import RoleLLM
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


@dataclass
class RoutingCounts:
    """How a step's items (own actions and inbound news) were routed by modulators: asked of
    a modulator; made (the answer has an entry for the item); parsed (a usable route was read,
    from the first answer or the retry's); retried (of those parsed, from the retry); and the
    fallbacks by why: truncated (an answer that left it undecided hit its token budget, at the
    first call or the retry), else by the retry's answer: unparseable (its entry, or the whole
    answer, could not be read) or missing (a readable answer without the item). `structured` counts the items asked with a JSON schema."""

    asked: int = 0
    made: int = 0
    parsed: int = 0
    retried: int = 0
    truncated: int = 0
    unparseable: int = 0
    missing: int = 0
    structured: int = 0

    @property
    def fallbacks(self) -> int:
        return self.truncated + self.unparseable + self.missing

    @classmethod
    def total(cls, counts: Iterable[RoutingCounts]) -> RoutingCounts:
        out = cls()
        for c in counts:
            for k, v in asdict(c).items():
                setattr(out, k, getattr(out, k) + v)
        return out

    def stats(self) -> dict[str, int]:
        """The per-round metrics (`routing_<count>`)."""
        return {f"routing_{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Routing:
    """One step's routing: a decision per own action, the delivered inbound events, and how
    the modulators' answers went (all zero for modes without a modulator)."""

    decisions: dict[int, Decision]
    deliveries: list[Delivery] = field(default_factory=list)
    counts: RoutingCounts = field(default_factory=RoutingCounts)


def members_text(group: Group, agents: Sequence[Agent], chars: int = 120) -> str:
    """Numbered members with a profile excerpt (group descriptions)."""
    return "\n".join(
        f"{local}: {agents[i].name} - {agents[i].profile.describe(chars)}"
        for local, i in enumerate(group.members)
    )


class RoleSource(Protocol):
    """Where a mode gets its LLMs: `matrix.llm.roles.Roles` (or a dict in a test)."""

    def get(self, role: str) -> RoleLLM: ...


@dataclass(frozen=True)
class CommunicationContext:
    """What the simulate stage hands every communication mode when it builds it: the one
    argument of a mode's constructor. Built once the groups exist (a fresh run) or are
    restored (a resumed one), so a mode sees the same context either way."""

    config: Mapping[str, Any]  # the resolved `communication` block (the mode's options too)
    roles: RoleSource  # .get(role): the LLM of each role in the mode's `llm_roles`
    agents: Sequence[Agent]  # the population
    groups: Sequence[Group]
    group_vectors: np.ndarray | None  # per group, its members' mean profile embedding
    seed: int  # the run's `seed`: draw from it so a resumed run draws the same


class Communication:
    """Decides who observes each action. A subclass is named by `_target_` in
    `conf/communication/<name>.yaml` and built as `cls(context)`; its class attributes tell
    the stage what it needs, so no caller compares mode names."""

    mode: ClassVar[str] = "base"  # the label groups.json records
    llm_roles: ClassVar[tuple[str, ...]] = ()  # llm.roles it calls (checked to have a backend)
    # An action may reach agents of other groups in the same step: groups cannot then run
    # without a barrier (simulation.schedule=groups refuses it).
    crosses_groups: ClassVar[bool] = False

    def __init__(self, context: CommunicationContext) -> None:
        self.context = context

    @classmethod
    def check_config(cls, config: Mapping[str, Any], p: ConfigProblems) -> None:
        """Add a problem (key `communication.<option>`) for each bad option, before any
        model loads. The base has none to check."""

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
    """Agents act alone (the paper's Table 8 ablation)."""

    mode = "none"

    def route(self, round_, actions, agents, groups):
        return Routing({i: Decision((), "none") for i in actions})


class RandomCommunication(Communication):
    """Random recipients from the whole population, as many as a group could hold."""

    mode = "random"
    crosses_groups = True

    def __init__(self, context: CommunicationContext) -> None:
        super().__init__(context)
        self.seed = context.seed
        self.max_recipients = max(1, int(context.config["size_max"]) - 1)

    def route(self, round_, actions, agents, groups):
        rng = random.Random(f"{self.seed}:{round_}")  # per round, so a resumed run draws the same
        out = {}
        for i in sorted(actions):
            others = _Others(len(agents), i)
            k = rng.randint(1, min(self.max_recipients, len(others))) if others else 0
            out[i] = Decision(tuple(sorted(rng.sample(others, k))), "random")
        return Routing(out)


class _Others(Sequence):
    """Agents 0..n-1 but `skip`, as a sequence computed on access: `random.sample` draws the
    same indices from it as from the list, without building n items per action."""

    def __init__(self, n: int, skip: int) -> None:
        self.n, self.skip = n, skip

    def __len__(self) -> int:
        return self.n - 1

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[x] for x in range(*j.indices(len(self)))]
        if not 0 <= j < self.n - 1:
            raise IndexError(j)
        return j if j < self.skip else j + 1


def communication_class(target: object) -> type[Communication]:
    """The `Communication` subclass `communication._target_` names; ValueError saying why not."""
    module, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import {target!r} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Communication)):
        raise ValueError(f"{target!r} is not a subclass of matrix.sim.communication.Communication")
    return cls


def build_communication(context: CommunicationContext) -> Communication:
    """The mode `context.config["_target_"]` names, built with hydra's instantiate."""
    communication_class(context.config["_target_"])  # a clear error before instantiate's own
    factory = instantiate({"_target_": context.config["_target_"], "_partial_": True})
    return factory(context)
