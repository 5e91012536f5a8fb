"""What each phase's step of one group is given, asks and writes back, for the `groups`
schedule (matrix/sim/scheduler.py decides when a step starts; this module what it does).

`GroupSteps` owns the groups' working state (`live`), each group's results of its unfinished
rounds and the inter-group news. A step runs in three parts: `prepare` (on the coordinator)
copies exactly what the phase reads (`given`) and returns the call to run on a worker thread,
or None when the step has nothing to ask; the call returns a `StepOut`; `apply` (on the
coordinator) lands the step's writes: the agent fields the phase writes (`AGENT_FIELDS`) and
the rest in the group's round. When a group's last step of a round is done, `finish` hands
back the group's state as of the end of that round (`GroupRound`), using what a step of a
later round saved before changing it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from matrix.sim import agents as agent_ops
from matrix.sim.communication import Group, RoutingCounts
from matrix.sim.engine import Simulation
from matrix.sim.phases import Step, phase_specs
from matrix.sim.schemas import Agent, Event, Scenario
from matrix.sim.state import SimState

# What a step finds in place of state its phase does not read (see matrix/sim/scheduler.py).
NOT_GIVEN = "<not given to this phase>"

# Agent fields behind each tracked resource (matrix/sim/phases.py).
AGENT_FIELDS = {
    "inbox": ("inbox",),
    "memory": ("memory", "memory_summary"),
    "plan": ("plan",),
    "done": ("done", "done_round"),
}
_HIDDEN = {"inbox": [NOT_GIVEN], "memory": [NOT_GIVEN], "memory_summary": NOT_GIVEN}
_HIDDEN["plan"] = NOT_GIVEN


def given(agent: Agent, reads: frozenset[str]) -> Agent:
    """A copy of `agent` with the state of the resources outside `reads` hidden. Whether an
    agent is done is never hidden: the coordinator picks the active agents itself."""
    # profiles are frozen and texts immutable: only the lists a phase may change are copied
    a = replace(agent, memory=list(agent.memory), inbox=list(agent.inbox))
    for res, names in AGENT_FIELDS.items():
        if res not in reads and res != "done":
            for name in names:
                setattr(a, name, copy.copy(_HIDDEN[name]))
    return a


@dataclass
class StepOut:
    """What a step's worker returns, applied on the coordinator."""

    agents: list[Agent] = field(default_factory=list)  # copies holding the step's writes
    value: Any = None


Call = Callable[[], StepOut]


@dataclass
class GroupRound:
    """One group's finished round, kept until every group has finished it."""

    events: list[Event]
    scenarios: list[Scenario]  # ids are given at commit
    flushed: list[Scenario]  # the last round's partial buffer (scenario.flush_partial)
    agents: dict[int, dict]  # member index -> its row as of the end of the round
    group: dict
    buffer: list[dict]
    deliveries: int = 0
    fallbacks: int = 0
    routing: RoutingCounts = field(default_factory=RoutingCounts)


def members(state: SimState, gid: int) -> list[Agent]:
    return [state.agents[i] for i in state.groups[gid].members]


def queue_news(decided: dict, gid: int, inbound_max: int) -> list[dict]:
    """Events other groups sent `gid` in a round, in sender order (as lock-step queues
    them), the newest `inbound_max` kept."""
    inbound: list[dict] = []
    for sender in sorted(decided):
        targets, news = decided[sender]
        if gid in targets:
            inbound = (inbound + news)[-inbound_max:]
    return inbound


def _copied(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value  # lists of texts; the rest immutable


def _value(state: SimState, gid: int, res: str) -> Any:
    """What resource `res` of group `gid` holds now (a copy)."""
    if res in AGENT_FIELDS:
        return {
            a.index: {n: _copied(getattr(a, n)) for n in AGENT_FIELDS[res]}
            for a in members(state, gid)
        }
    if res == "group_memory":
        return list(state.groups[gid].memory)
    if res == "buffer":
        return list(state.buffers.get(gid, []))
    return None  # a round's own results (actions, routing...) are kept by round


class GroupSteps:
    """The groups' working state and what each phase's step does to it."""

    def __init__(self, sim: Simulation, state: SimState):
        self.sim = sim
        self.live = state  # changed on the coordinator only
        self.specs = phase_specs(sim.prompts)
        self.first_round = state.round + 1
        # other groups as an inter-group prompt sees them: their descriptions only
        self.stubs = [
            Group(g.id, list(g.members), g.description, [NOT_GIVEN], []) for g in state.groups
        ]
        self.first_inbound = {g.id: list(g.inbound) for g in state.groups}
        # round -> sender -> (the groups it tells, its news): published by `share` steps
        self.news: dict[int, dict[int, tuple[tuple[int, ...], list[dict]]]] = {}
        self.rounds: dict[int, dict[int, dict]] = {g.id: {} for g in state.groups}
        self.before: dict[int, dict[int, dict]] = {g.id: {} for g in state.groups}

    def news_complete(self, r: int) -> bool:
        """Whether every group has decided whom to tell of its round-r events."""
        return len(self.news.get(r, {})) == len(self.live.groups)

    # -- prepare (coordinator) -> the call (worker) --------------------------------------------
    def prepare(self, gid: int, step: Step) -> Call | None:
        r, phase = step
        return getattr(self, f"_prepare_{phase}")(gid, r)

    def _copies(self, phase: str, agents: list[Agent]) -> list[Agent]:
        return [given(a, self.specs[phase].reads) for a in agents]

    def _active(self, phase: str, gid: int) -> list[Agent]:
        return self._copies(phase, [a for a in members(self.live, gid) if not a.done])

    def _group_copy(self, gid: int, phase: str, inbound: list[dict]) -> Group:
        group = self.live.groups[gid]
        memory = list(group.memory) if "group_memory" in self.specs[phase].reads else [NOT_GIVEN]
        return Group(gid, list(group.members), group.description, memory, inbound)

    def _prepare_act(self, gid: int, r: int) -> Call | None:
        copies = self._active("act", gid)
        if not copies:  # every member reached its goal: nothing to ask
            return None
        return lambda: StepOut(copies, self.sim.act(copies, r))

    def _prepare_route(self, gid: int, r: int) -> Call | None:
        if r == self.first_round:
            inbound = list(self.first_inbound[gid])
        else:
            inbound = queue_news(self.news[r - 1], gid, self.sim.cfg.inbound_max)
        group = self._group_copy(gid, "route", inbound)
        view = {a.index: a for a in self._copies("route", members(self.live, gid))}
        actions = dict(self.rounds[gid][r]["actions"])
        return lambda: StepOut(value=self.sim.comm.route(r, actions, view, [group]))

    def _prepare_share(self, gid: int, r: int) -> Call | None:
        actions = dict(self.rounds[gid][r]["actions"])
        actors = sorted(actions)  # the round's events are one per action, by agent
        if not actors:
            return None
        groups = list(self.stubs)
        groups[gid] = self._group_copy(gid, "share", [])
        view = {a.index: a for a in self._copies("share", members(self.live, gid))}
        comm = self.sim.comm
        return lambda: StepOut(value=comm.inter_group({gid: actors}, actions, view, groups))

    def _prepare_summary(self, gid: int, r: int) -> Call | None:
        res, sim = self.rounds[gid][r], self.sim
        buffered = SimpleNamespace(
            agents=self.live.agents,  # names only
            buffers={gid: list(self.live.buffers.get(gid, []))},  # steps are never changed
        )
        sim.buffer_steps(r, res["events"], res["routing"].deliveries, res["forwarded"], buffered)
        res["buffer"] = buffer = buffered.buffers[gid]
        full = len(buffer) >= sim.cfg.interval
        # the run stops after its last round: the partial buffer is summarized now, in
        # this group's own step, not after every group finished (what lock-step does)
        flush = r == sim.cfg.max_rounds and sim.cfg.flush_partial and bool(buffer)
        if not (full or flush):
            return None
        group = self._group_copy(gid, "summary", [])
        view = SimState(
            agents={a.index: a for a in self._copies("summary", members(self.live, gid))},
            groups={gid: group},
            buffers={gid: buffer},
        )
        res["flush"] = not full
        return lambda: StepOut(value=(sim.summarize(view, [gid]), group, view.buffers[gid]))

    def _prepare_memory(self, gid: int, r: int) -> Call | None:
        cfg = self.sim.cfg
        group_members = members(self.live, gid)
        if not any(len(a.memory) > cfg.memory_max_items for a in group_members):
            return None
        copies = self._copies("memory", group_members)
        summarizer, prompts = self.sim.roles.get("summarizer"), self.sim.prompts

        def call():
            agent_ops.summarize_memories(
                summarizer, prompts, copies, cfg.memory_max_items, cfg.memory_keep
            )
            return StepOut(copies)

        return call

    def _prepare_plan(self, gid: int, r: int) -> Call | None:
        copies = self._active("plan", gid)
        if not copies:
            return None
        llm, prompts = self.sim.agent_llm, self.sim.prompts
        return lambda: StepOut(copies, agent_ops.revise_plans(llm, prompts, copies, r))

    def _prepare_goal_check(self, gid: int, r: int) -> Call | None:
        copies = self._active("goal_check", gid)
        if not copies:
            return None
        llm, prompts = self.sim.agent_llm, self.sim.prompts
        return lambda: StepOut(copies, agent_ops.check_goals(llm, prompts, copies, r))

    # -- apply (coordinator) ---------------------------------------------------------------
    def apply(self, gid: int, step: Step, out: StepOut, finished_through: int) -> bool:
        """Land a step's writes; True when it completed a round's news (every group may then
        route that news)."""
        r, phase = step
        writes = self.specs[phase].writes
        self._keep_before(gid, r, writes, finished_through)
        for copy_ in out.agents:  # the agent fields the phase writes, nothing else
            live = self.live.agents[copy_.index]
            for res in writes & AGENT_FIELDS.keys():
                for name in AGENT_FIELDS[res]:
                    setattr(live, name, getattr(copy_, name))
        res = self.rounds[gid].setdefault(r, {"scenarios": [], "flushed": []})
        # memory, plan and goal_check write agent fields only
        apply_rest = getattr(self, f"_apply_{phase}", None)
        return bool(apply_rest(gid, r, res, out)) if apply_rest else False

    def _apply_act(self, gid: int, r: int, res: dict, out: StepOut) -> None:
        res["actions"] = out.value or {}

    def _apply_route(self, gid: int, r: int, res: dict, out: StepOut) -> None:
        sim, routing = self.sim, out.value
        res["routing"] = routing
        res["events"] = sim.record_events(r, res["actions"], routing.decisions, self.live)
        sim.deliver_news(routing.deliveries, self.live)
        for a in members(self.live, gid):
            a.inbox = a.inbox[-sim.cfg.inbox_max :]

    def _apply_share(self, gid: int, r: int, res: dict, out: StepOut) -> bool:
        owns = self.sim.owns_group
        forwarded = out.value or {}
        if owns is not None:  # a shard forwards only to groups it simulates
            forwarded = {k: tuple(t for t in ts if owns(t)) for k, ts in forwarded.items()}
        res["forwarded"] = forwarded
        actions = res["actions"]
        news = [
            {"group": gid, "agent": i, "name": self.live.agents[i].name, "action": actions[i]}
            | {"round": r}
            for i in sorted(actions)
        ]
        self.news.setdefault(r, {})[gid] = (tuple(forwarded.get(gid, ())), news)
        return self.news_complete(r)

    def _apply_summary(self, gid: int, r: int, res: dict, out: StepOut) -> None:
        if out.value is None:
            self.live.buffers[gid] = res["buffer"]
            return
        scenarios, group, buffer = out.value
        self.live.buffers[gid] = buffer
        self.live.groups[gid].memory = group.memory
        res["flushed" if res.get("flush") else "scenarios"] = scenarios

    # -- rounds as a logical clock ------------------------------------------------------------
    def _keep_before(self, gid: int, r: int, writes: frozenset[str], finished_through: int):
        """Before a step of round r changes something, an unfinished earlier round keeps
        what it left there (its final value: the step waited for every earlier write)."""
        for q in range(finished_through + 1, r):
            kept = self.before[gid].setdefault(q, {})
            for res in writes:
                if res not in kept:
                    kept[res] = _value(self.live, gid, res)

    def finish(self, gid: int, r: int) -> GroupRound:
        """Group `gid`'s state as of the end of round r, and the round's results."""
        kept = self.before[gid].pop(r, {})
        agents = {}
        for a in members(self.live, gid):
            row = a.to_row()  # a copy (dataclasses.asdict)
            for res in AGENT_FIELDS:
                if res in kept:
                    row.update(kept[res][a.index])
            agents[a.index] = row
        group = asdict(self.live.groups[gid])
        if "group_memory" in kept:
            group["memory"] = kept["group_memory"]
        buffer = kept.get("buffer", _value(self.live, gid, "buffer"))
        res = self.rounds[gid].pop(r)
        routing, events = res["routing"], res["events"]
        return GroupRound(
            events=events,
            scenarios=res["scenarios"],
            flushed=res["flushed"],
            agents=agents,
            group=group,
            buffer=list(buffer),
            deliveries=len(routing.deliveries),
            fallbacks=sum(1 for e in events if e.routing == "fallback")
            + sum(1 for d in routing.deliveries if d.how == "fallback"),
            routing=routing.counts,
        )
