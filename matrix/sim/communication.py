"""Who observes which action: the paper's structured communication and its two ablations.

- structured: each group's modulator (an LLM role) decides, for each action of its group,
  which members become aware of it (intra-group routing, `[ids], reason`), and between rounds
  which other groups should hear of its group's events (inter-group routing, chosen from the
  other groups' descriptions).
- random: each action reaches a random set of agents from the whole population.
- none: agents act alone; nobody observes anybody.

All three share one interface, so the engine does not know which one runs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from matrix.common.prompts import render_prompt
from matrix.llm.roles import RoleLLM
from matrix.sim.routing import Route, parse_route
from matrix.sim.schemas import Agent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    observers: tuple[int, ...]  # agent indices
    how: str  # modulator | retry | fallback | random | none
    reason: str = ""


@dataclass
class Group:
    id: int
    members: list[int]
    description: str = ""
    memory: list[str] = None  # recent raw scenario lines, for inter-group decisions

    def __post_init__(self):
        if self.memory is None:
            self.memory = []


def members_text(group: Group, agents: Sequence[Agent]) -> str:
    return "\n".join(
        f"{local}: {agents[i].name} - {agents[i].profile.describe(120)}"
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
    ) -> dict[int, Decision]:
        raise NotImplementedError

    def inter_group(
        self, round_lines: Mapping[int, list[str]], agents: Sequence[Agent], groups: Sequence[Group]
    ) -> dict[int, tuple[int, ...]]:
        """Group id -> ids of the other groups that hear of its events this round."""
        return {}


class NoCommunication(Communication):
    mode = "none"

    def route(self, round_, actions, agents, groups):
        return {i: Decision((), "none") for i in actions}


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
        return out


class StructuredCommunication(Communication):
    mode = "structured"

    def __init__(
        self,
        llm: RoleLLM,
        prompts: Mapping,
        group_vectors: np.ndarray | None,
        inter_group: bool = True,
        candidates: int = 8,
    ):
        self.llm = llm
        self.prompts = prompts
        self.group_vectors = group_vectors
        self.inter_group_enabled = inter_group
        self.candidates = candidates
        self.fallbacks = 0

    def route(self, round_, actions, agents, groups):
        jobs = []  # (actor, group, chat)
        for i in sorted(actions):
            g = groups[agents[i].group]
            if len(g.members) < 2:
                continue
            fields = {
                "members": members_text(g, agents),
                "actor_id": g.members.index(i),
                "actor_name": agents[i].name,
                "action": actions[i],
                "group_description": g.description,
            }
            jobs.append(
                (
                    i,
                    g,
                    render_prompt(
                        self.prompts["intra_group"], "communication.prompts.intra_group", **fields
                    ),
                )
            )
        out = {i: Decision((), "alone") for i in actions}
        pending = list(range(len(jobs)))
        for attempt, how in enumerate(("modulator", "retry")):
            if not pending:
                break
            chats = [jobs[k][2] for k in pending]
            if attempt:
                chats = [
                    c + [{"role": "user", "content": self.prompts["retry_hint"]}] for c in chats
                ]
            answers = self.llm.generate(chats)
            still = []
            for k, ans in zip(pending, answers, strict=True):
                actor, g, _ = jobs[k]
                route = parse_route(ans.text, range(len(g.members)), exclude=g.members.index(actor))
                if route is None:
                    still.append(k)
                else:
                    out[actor] = Decision(tuple(g.members[x] for x in route.ids), how, route.reason)
            pending = still
        for k in pending:
            actor, g, _ = jobs[k]
            self.fallbacks += 1
            log.info(
                "modulator of group %d gave no usable routing for agent %d: broadcasting",
                g.id,
                actor,
            )
            out[actor] = Decision(
                tuple(m for m in g.members if m != actor), "fallback", "unparseable answer"
            )
        return out

    def _candidates(self, gid: int, groups: Sequence[Group]) -> list[int]:
        others = [g.id for g in groups if g.id != gid]
        if self.group_vectors is None or len(others) <= self.candidates:
            return others
        sims = self.group_vectors[others] @ self.group_vectors[gid]
        return [others[j] for j in np.argsort(-sims)[: self.candidates]]

    def inter_group(self, round_lines, agents, groups):
        if not self.inter_group_enabled or len(groups) < 2:
            return {}
        jobs = []
        for gid, lines in sorted(round_lines.items()):
            if not lines:
                continue
            cands = self._candidates(gid, groups)
            fields = {
                "description": groups[gid].description,
                "events": "\n".join(f"- {x}" for x in lines),
                "groups": "\n".join(f"{c}: {groups[c].description}" for c in cands),
            }
            jobs.append(
                (
                    gid,
                    set(cands),
                    render_prompt(
                        self.prompts["inter_group"], "communication.prompts.inter_group", **fields
                    ),
                )
            )
        answers = self.llm.generate([j[2] for j in jobs]) if jobs else []
        out = {}
        for (gid, cands, _), ans in zip(jobs, answers, strict=True):
            route: Route | None = parse_route(ans.text, cands, exclude=gid)
            out[gid] = route.ids if route else ()
        return out


def build_communication(
    mode: str, cfg: Mapping, llm: RoleLLM | None, group_vectors, seed: int
) -> Communication:
    if mode == "structured":
        return StructuredCommunication(
            llm,
            cfg["prompts"],
            group_vectors,
            inter_group=bool(cfg.get("inter_group", True)),
            candidates=int(cfg.get("inter_group_candidates", 8)),
        )
    if mode == "random":
        return RandomCommunication(seed, int(cfg.get("size_max", 10)) - 1)
    if mode == "none":
        return NoCommunication()
    raise ValueError(f"communication.mode={mode!r}: use structured, random or none")
