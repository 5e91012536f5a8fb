"""The paper's structured communication: each group's modulator (an LLM role) routes, once per
step, all of its members' actions and the news other groups sent it, and picks the other groups
that hear of its group's events (see `matrix.sim.communication` for the modes side by side).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from matrix.common.validation import ConfigProblems
from matrix.llm.prompts import render_prompt
from matrix.llm.protocol import constrains_output
from matrix.sim.communication import (
    Communication,
    CommunicationContext,
    Decision,
    Delivery,
    Group,
    Routing,
    RoutingCounts,
)
from matrix.sim.modulator_inputs import (
    members_goals_text,
    memory_text,
    modulator_limits,
)
from matrix.sim.routing import Route, item_label, parse_route
from matrix.sim.routing_schema import (
    RoutingAnswers,
    fallback_cause,
    read_answer,
    routing_schema,
    with_hint,
)
from matrix.sim.schemas import Agent

log = logging.getLogger(__name__)


@dataclass
class _Item:
    """One thing a modulator routes: an own member's action or an inbound event."""

    label: str
    actor: int | None  # the member (agent index) who acted, None for inbound news
    text: str
    inbound: dict | None = None


# Above this many groups, candidates are computed a block of groups at a time (the same
# neighbours; at the shipped sizes, 200 groups, the per-group path runs, as it always did).
BLOCKED_ABOVE = 500
BLOCK = 256


class StructuredCommunication(Communication):
    """The paper's mode. Options (communication.*): prompts, inter_group, goal_chars,
    memory_size, inbound_max, inter_group_candidates, unparsed."""

    mode = "structured"
    llm_roles = ("modulator",)

    def __init__(self, context: CommunicationContext) -> None:
        super().__init__(context)
        cfg = context.config
        self.llm = context.roles.get("modulator")
        self.prompts = cfg["prompts"]
        self.group_vectors = context.group_vectors
        self._nearest: dict[int, list[int]] = {}  # group -> its candidates (vectors are fixed)
        self.inter_group_enabled = bool(cfg["inter_group"])
        self.limits = modulator_limits(cfg)
        self.fallbacks = 0

    @classmethod
    def check_config(cls, config: Mapping, p: ConfigProblems) -> None:
        unparsed = config.get("unparsed")
        p.check(
            unparsed in ("broadcast", "nobody"),
            "communication.unparsed",
            f"'{unparsed}' is not one of broadcast, nobody",
        )
        for key in ("inbound_max", "memory_size", "goal_chars"):
            p.check(int(config[key]) >= 1, f"communication.{key}", "must be >= 1")
        RoutingAnswers.check(config, p)

    # -- intra-group: one call per group per step -----------------------------------------
    def _items(self, g: Group, actions: Mapping[int, str], agents: Sequence[Agent]) -> list[_Item]:
        items = [
            _Item("", i, f"{agents[i].name} (member {g.members.index(i)}): {actions[i]}")
            for i in g.members
            if i in actions
        ]
        for ev in g.inbound:
            items.append(
                _Item("", None, f"news from another community: {ev['name']}: {ev['action']}", ev)
            )
        for k, it in enumerate(items):
            it.label = item_label(k)
        return items

    def _chat(self, g: Group, items: list[_Item], agents: Sequence[Agent]):
        fields = {
            "description": g.description,
            "memory": memory_text(g),
            "members": members_goals_text(g, agents, self.limits.goal_chars),
            "items": "\n".join(f"{it.label}. {it.text}" for it in items),
            "labels": ", ".join(it.label for it in items),
        }
        return render_prompt(
            self.prompts["intra_group"], "communication.prompts.intra_group", **fields
        )

    def route(self, round_, actions, agents, groups):
        out = {i: Decision((), "alone") for i in actions}
        deliveries: list[Delivery] = []
        jobs = []  # (group, items, chat)
        for g in groups:
            items = self._items(g, actions, agents)
            if not items:
                continue
            if len(g.members) < 2:  # nobody to tell of an own action; news reaches the one member
                deliveries += [
                    self._delivery(g, it, tuple(g.members), "alone") for it in items if it.inbound
                ]
                continue
            jobs.append((g, items, self._chat(g, items, agents)))
        decided, counts = self._ask(jobs)
        for g, items, _ in jobs:
            for it in items:
                got = decided.get((g.id, it.label))
                if got is not None:
                    route, how = got
                    observers, reason = tuple(g.members[x] for x in route.ids), route.reason
                else:
                    observers, how, reason = self._fallback(g, it)
                if it.inbound is None:
                    out[it.actor] = Decision(observers, how, reason)
                else:
                    deliveries.append(self._delivery(g, it, observers, how, reason))
        return Routing(out, deliveries, counts)

    def _ask(self, jobs: list) -> tuple[dict[tuple[int, str], tuple[Route, str]], RoutingCounts]:
        """Each group's routes, keyed by (group id, item label), with how each was decided, and
        the step's counts: one batched call for all groups (one per group shape on the
        structured path: a schema is per shape), then one retry for the groups whose answer
        left items undecided (with the retry hint on the line path)."""
        decided: dict[tuple[int, str], tuple[Route, str]] = {}
        made: set[tuple[int, str]] = set()
        why: dict[tuple[int, str], str] = {}  # an item left undecided: why (fallback_cause)
        structured = self.structured
        pending = list(range(len(jobs)))
        for attempt, how in enumerate(("modulator", "retry")):
            if not pending:
                break
            todo = {
                k: [it for it in jobs[k][1] if (jobs[k][0].id, it.label) not in decided]
                for k in pending
            }
            answers = self._answers(jobs, todo, attempt, structured)
            still = []
            for k in pending:
                g, ans = jobs[k][0], answers[k]
                exclude = {
                    it.label: (g.members.index(it.actor) if it.actor is not None else None)
                    for it in todo[k]
                }
                labels = [it.label for it in todo[k]]
                routes, answered = read_answer(
                    ans.text, labels, len(g.members), exclude, structured
                )
                made |= {(g.id, label) for label in answered | routes.keys()}
                for label, route in routes.items():
                    decided[(g.id, label)] = (route, how)
                for it in todo[k]:
                    if it.label not in routes:
                        key = (g.id, it.label)
                        why[key] = fallback_cause(ans, it.label, answered, why.get(key))
                if len(routes) < len(todo[k]):
                    still.append(k)
            pending = still
        asked = sum(len(items) for _, items, _ in jobs)
        undecided = [v for key, v in why.items() if key not in decided]
        counts = RoutingCounts(
            asked=asked,
            made=len(made),
            parsed=len(decided),
            retried=sum(1 for _, how in decided.values() if how == "retry"),
            truncated=undecided.count("truncated"),
            unparseable=undecided.count("unparseable"),
            missing=undecided.count("missing"),
            structured=asked if structured else 0,
        )
        return decided, counts

    @property
    def structured(self) -> bool:
        """Whether answers are asked for with a JSON schema: communication.structured_output
        is auto and the modulator's backend constrains decoding to one."""
        return self.limits.answers.structured_output == "auto" and constrains_output(
            self.llm.backend
        )

    def _budget(self, g: Group, items: list[_Item], structured: bool) -> dict:
        """The max_new_tokens override of one group's answer: sized from the group under
        token_budget=group, or auto with a schema; none (the role's) otherwise."""
        budget = self.limits.answers.token_budget
        if not (budget == "group" or (budget == "auto" and structured)):
            return {}
        return {"max_new_tokens": self.limits.answers.tokens(len(items), len(g.members))}

    def _answers(self, jobs: list, todo: dict[int, list[_Item]], attempt: int, structured: bool):
        """Job index -> the modulator's answer for its undecided items."""
        if not structured:  # one batch, its budget the largest group's (rows stop at their end)
            ks = list(todo)
            chats = [jobs[k][2] for k in ks]
            if attempt:
                hint = {"role": "user", "content": self.prompts["retry_hint"]}
                chats = [c + [hint] for c in chats]
            budgets = [self._budget(jobs[k][0], todo[k], False) for k in ks]
            big = max(budgets, key=lambda b: b.get("max_new_tokens", 0))
            return dict(zip(ks, self.llm.generate(chats, **big), strict=True))
        shapes: dict[tuple, list[int]] = {}  # one schema (and call) per labels and group size
        for k, items in todo.items():
            shapes.setdefault(
                (tuple(it.label for it in items), len(jobs[k][0].members)), []
            ).append(k)
        out = {}
        for (labels, members), ks in shapes.items():
            schema = routing_schema(labels, members, self.limits.answers.reason_chars)
            chats = [with_hint(jobs[k][2], self.prompts.get("json_hint", "")) for k in ks]
            over = self._budget(jobs[ks[0]][0], todo[ks[0]], True)
            answers = self.llm.generate(chats, json_schema=schema, **over)
            out.update(zip(ks, answers, strict=True))
        return out

    def _fallback(self, g: Group, it: _Item) -> tuple[tuple[int, ...], str, str]:
        """Observers, how and why for an item the modulator gave no usable route for, by
        `communication.unparsed` (broadcast to the rest of the group, or nobody)."""
        self.fallbacks += 1
        observers = (
            tuple(m for m in g.members if m != it.actor)
            if self.limits.unparsed == "broadcast"
            else ()
        )
        log.debug(  # counted per round in the log (matrix.sim.run), and in report.md
            "modulator of group %d gave no usable routing for item %s: %s",
            g.id,
            it.label,
            "broadcasting" if observers else "nobody observes it",
        )
        return observers, "fallback", "unparseable answer"

    @staticmethod
    def _delivery(g: Group, it: _Item, observers, how: str, reason: str = "") -> Delivery:
        ev = it.inbound
        return Delivery(
            g.id, ev["group"], ev["agent"], ev["name"], ev["action"], observers, how, reason
        )

    # -- inter-group: which other groups hear of this group's events ----------------------
    def _candidates(self, gid: int, groups: Sequence[Group]) -> list[int]:
        """The most similar other groups, computed once per group: O(groups) each, so every
        round after the first costs nothing here."""
        if gid not in self._nearest:
            if self.group_vectors is not None and len(groups) > BLOCKED_ABOVE:
                self._nearest.update(self._nearest_block(gid, groups))
            else:
                others = [g.id for g in groups if g.id != gid]
                if self.group_vectors is None or len(others) <= self.limits.candidates:
                    return others
                sims = self.group_vectors[others] @ self.group_vectors[gid]
                self._nearest[gid] = [
                    others[j] for j in np.argsort(-sims)[: self.limits.candidates]
                ]
        return self._nearest[gid]

    def _nearest_block(self, gid: int, groups: Sequence[Group]) -> dict[int, list[int]]:
        """Candidates of `gid` and of the next uncached groups, BLOCK at a time: one matrix
        product per block instead of a vector product per group."""
        todo = [gid] + [g.id for g in groups if g.id != gid and g.id not in self._nearest]
        block = np.asarray(todo[:BLOCK])
        vecs = self.group_vectors
        ids = np.asarray([g.id for g in groups])
        sims = vecs[block] @ vecs[ids].T
        sims[ids[None, :] == block[:, None]] = -np.inf  # never a group itself
        c = self.limits.candidates
        top = np.argpartition(-sims, c, axis=1)[:, :c]
        out = {}
        for row, g in enumerate(block.tolist()):
            best = top[row][np.argsort(-sims[row, top[row]], kind="stable")]
            out[g] = ids[best].tolist()
        return out

    def inter_group(self, round_events, actions, agents, groups):
        if not self.inter_group_enabled or len(groups) < 2:
            return {}
        jobs = []
        for gid, actors in sorted(round_events.items()):
            if not actors:
                continue
            cands = self._candidates(gid, groups)
            fields = {
                "description": groups[gid].description,
                "memory": memory_text(groups[gid]),
                "events": "\n".join(f"- {agents[i].name}: {actions[i]}" for i in actors),
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
