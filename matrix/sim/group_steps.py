"""One group's phase steps for the `groups` scheduler (matrix/sim/scheduler.py).

A step runs in three parts: `PREPARE[phase]` (on the coordinator) copies exactly what the
phase reads (`given`) and returns the call to run on a worker thread, or None when the step
has nothing to ask; the call returns a `StepOut`; `APPLY[phase]` (on the coordinator) lands
the step's results in the group's round. The agent fields a phase writes are copied back by
the coordinator itself (`AGENT_FIELDS`), so an apply function handles only the rest.

Every function takes the scheduler `s` (its live state, the phase specs, the news of each
round), the group's progress `g` and the round `r`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from matrix.sim import agents as agent_ops
from matrix.sim.communication import Group
from matrix.sim.engine import SimState
from matrix.sim.schemas import Agent

if TYPE_CHECKING:
    from matrix.sim.scheduler import GroupProgress, GroupScheduler

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


def _copies(s: GroupScheduler, phase: str, agents: list[Agent]) -> list[Agent]:
    return [given(a, s.specs[phase].reads) for a in agents]


def _group_copy(s: GroupScheduler, gid: int, phase: str, inbound: list[dict]) -> Group:
    group = s.live.groups[gid]
    memory = list(group.memory) if "group_memory" in s.specs[phase].reads else [NOT_GIVEN]
    return Group(gid, list(group.members), group.description, memory, inbound)


# -- prepare (coordinator) -> the call (worker) ----------------------------------------------
Call = Callable[[], StepOut]


def prepare_act(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    copies = _copies(s, "act", [a for a in members(s.live, g.gid) if not a.done])
    if not copies:  # every member reached its goal: nothing to ask
        return None
    return lambda: StepOut(copies, s.sim.act(copies, r))


def prepare_route(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    if r == s.first_round:
        inbound = list(s.first_inbound[g.gid])
    else:
        inbound = queue_news(s.news[r - 1], g.gid, s.sim.cfg.inbound_max)
    group = _group_copy(s, g.gid, "route", inbound)
    view = {a.index: a for a in _copies(s, "route", members(s.live, g.gid))}
    actions = dict(g.rounds[r]["actions"])
    return lambda: StepOut(value=s.sim.comm.route(r, actions, view, [group]))


def prepare_share(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    actions = dict(g.rounds[r]["actions"])
    actors = sorted(actions)  # the round's events are one per action, by agent
    if not actors:
        return None
    groups = list(s.stubs)
    groups[g.gid] = _group_copy(s, g.gid, "share", [])
    view = {a.index: a for a in _copies(s, "share", members(s.live, g.gid))}
    sim = s.sim
    return lambda: StepOut(value=sim.comm.inter_group({g.gid: actors}, actions, view, groups))


def prepare_summary(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    res = g.rounds[r]
    sim, gid = s.sim, g.gid
    buffered = SimpleNamespace(
        agents=s.live.agents,  # names only
        buffers={gid: list(s.live.buffers.get(gid, []))},  # steps are never changed
    )
    sim.buffer_steps(r, res["events"], res["routing"].deliveries, res["forwarded"], buffered)
    res["buffer"] = buffer = buffered.buffers[gid]
    full = len(buffer) >= sim.cfg.interval
    # the run stops after its last round: the partial buffer is summarized now, in
    # this group's own step, not after every group finished (what lock-step does)
    flush = r == sim.cfg.max_rounds and sim.cfg.flush_partial and bool(buffer)
    if not (full or flush):
        return None
    group = _group_copy(s, gid, "summary", [])
    view = SimState(
        agents={a.index: a for a in _copies(s, "summary", members(s.live, gid))},
        groups={gid: group},
        buffers={gid: buffer},
    )
    res["flush"] = not full
    return lambda: StepOut(value=(sim.summarize(view, [gid]), group, view.buffers[gid]))


def prepare_memory(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    cfg = s.sim.cfg
    group_members = members(s.live, g.gid)
    if not any(len(a.memory) > cfg.memory_max_items for a in group_members):
        return None
    copies = _copies(s, "memory", group_members)
    summarizer = s.sim.roles.get("summarizer")

    def call():
        prompts = s.sim.prompts
        agent_ops.summarize_memories(
            summarizer, prompts, copies, cfg.memory_max_items, cfg.memory_keep
        )
        return StepOut(copies)

    return call


def prepare_plan(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    copies = _copies(s, "plan", [a for a in members(s.live, g.gid) if not a.done])
    if not copies:
        return None
    llm = s.sim.agent_llm
    return lambda: StepOut(copies, agent_ops.revise_plans(llm, s.sim.prompts, copies, r))


def prepare_goal_check(s: GroupScheduler, g: GroupProgress, r: int) -> Call | None:
    copies = _copies(s, "goal_check", [a for a in members(s.live, g.gid) if not a.done])
    if not copies:
        return None
    llm = s.sim.agent_llm
    return lambda: StepOut(copies, agent_ops.check_goals(llm, s.sim.prompts, copies, r))


PREPARE: dict[str, Callable[..., Call | None]] = {
    "act": prepare_act,
    "route": prepare_route,
    "share": prepare_share,
    "summary": prepare_summary,
    "memory": prepare_memory,
    "plan": prepare_plan,
    "goal_check": prepare_goal_check,
}


# -- apply (coordinator): a step's results beyond the agent fields it writes ------------------
def apply_act(s: GroupScheduler, g: GroupProgress, r: int, res: dict, out: StepOut) -> None:
    res["actions"] = out.value or {}


def apply_route(s: GroupScheduler, g: GroupProgress, r: int, res: dict, out: StepOut) -> None:
    sim, state = s.sim, s.live
    routing = out.value
    res["routing"] = routing
    res["events"] = sim.record_events(r, res["actions"], routing.decisions, state)
    sim.deliver_news(routing.deliveries, state)
    for a in members(s.live, g.gid):
        a.inbox = a.inbox[-sim.cfg.inbox_max :]


def apply_share(s: GroupScheduler, g: GroupProgress, r: int, res: dict, out: StepOut) -> None:
    sim, gid = s.sim, g.gid
    forwarded = out.value or {}
    if sim.owns_group is not None:  # a shard forwards only to groups it simulates
        forwarded = {k: tuple(t for t in ts if sim.owns_group(t)) for k, ts in forwarded.items()}
    res["forwarded"] = forwarded
    actions = res["actions"]
    news = [
        {"group": gid, "agent": i, "name": s.live.agents[i].name, "action": actions[i]}
        | {"round": r}
        for i in sorted(actions)
    ]
    s.news.setdefault(r, {})[gid] = (tuple(forwarded.get(gid, ())), news)
    if len(s.news[r]) == len(s.groups):  # every group may route round r+1's news
        s.launch_all()


def apply_summary(s: GroupScheduler, g: GroupProgress, r: int, res: dict, out: StepOut) -> None:
    gid = g.gid
    if out.value is None:
        s.live.buffers[gid] = res["buffer"]
        return
    scenarios, group, buffer = out.value
    s.live.buffers[gid] = buffer
    s.live.groups[gid].memory = group.memory
    res["flushed" if res.get("flush") else "scenarios"] = scenarios


# memory, plan and goal_check write agent fields only
APPLY: dict[str, Callable[..., None]] = {
    "act": apply_act,
    "route": apply_route,
    "share": apply_share,
    "summary": apply_summary,
}
