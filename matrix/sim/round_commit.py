"""Rounds as a logical clock for the `groups` scheduler (matrix/sim/scheduler.py).

Groups run ahead of each other, so a round ends twice. A group's round ends when its last
step of that round is done (`finish_round`): its state as of the end of the round is kept,
using what a step of a later round saved before changing it (`keep_before`). Every group's
round commits when the last group finished it (`commit`), rounds in order, as the
lock-step engine commits one: events by agent, scenarios by group with ids numbered then,
the state checkpointed, the round's stats reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from matrix.sim.communication import Group
from matrix.sim.engine import SimState, round_spend
from matrix.sim.group_steps import AGENT_FIELDS, members, queue_news
from matrix.sim.schemas import Agent, Event, Scenario

if TYPE_CHECKING:
    from matrix.sim.scheduler import GroupProgress, GroupScheduler


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


def _copied(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value  # lists of texts; the rest immutable


def _value(state: SimState, gid: int, res: str) -> Any:
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


def keep_before(s: GroupScheduler, g: GroupProgress, r: int, writes: frozenset[str]) -> None:
    """Before a step of round r changes something, an unfinished earlier round keeps
    what it left there (its final value: the step waited for every earlier write)."""
    for q in range(g.finished_through + 1, r):
        kept = g.before.setdefault(q, {})
        for res in writes:
            if res not in kept:
                kept[res] = _value(s.live, g.gid, res)


def finish_round(s: GroupScheduler, g: GroupProgress, r: int) -> None:
    """Keep group `g`'s round r; commit every round all groups have finished."""
    kept = g.before.pop(r, {})
    agents = {}
    for a in members(s.live, g.gid):
        row = a.to_row()  # a copy (dataclasses.asdict)
        for res in AGENT_FIELDS:
            if res in kept:
                row.update(kept[res][a.index])
        agents[a.index] = row
    group = asdict(s.live.groups[g.gid])
    if "group_memory" in kept:
        group["memory"] = kept["group_memory"]
    buffer = kept.get("buffer", _value(s.live, g.gid, "buffer"))
    res = g.rounds.pop(r)
    routing, events = res["routing"], res["events"]
    g.finished_through = r
    s.finished.setdefault(r, {})[g.gid] = GroupRound(
        events=events,
        scenarios=res["scenarios"],
        flushed=res["flushed"],
        agents=agents,
        group=group,
        buffer=list(buffer),
        deliveries=len(routing.deliveries),
        fallbacks=sum(1 for e in events if e.routing == "fallback")
        + sum(1 for d in routing.deliveries if d.how == "fallback"),
    )
    # a round commits once every group finished it, rounds in order
    while len(s.finished.get(s.committed.round + 1, {})) == len(s.groups):
        if s.beyond_stop(s.committed.round + 1):
            break
        commit(s, s.committed.round + 1)
    if r == g.finished_through and r + 1 in g.rounds and g.done >= s.round_steps.get(r + 1, {None}):
        finish_round(s, g, r + 1)


def commit(s: GroupScheduler, r: int) -> None:
    """Every group's round r, committed as the lock-step engine commits it."""
    sim = s.sim
    done = s.finished.pop(r)
    state = s.committed
    for gid, g in sorted(done.items()):
        for i, row in g.agents.items():
            state.agents[i] = Agent.from_row(row)
        state.groups[gid] = Group(**g.group)
        state.buffers[gid] = g.buffer
    # what each group queued for its next round (kept in state.json, as lock-step does)
    for gid in done:
        state.groups[gid].inbound = queue_news(s.news[r], gid, sim.cfg.inbound_max)
    s.news.pop(r - 1, None)
    events = sorted((e for g in done.values() for e in g.events), key=lambda e: e.agent)

    def numbered(scenarios: list[tuple[int, Scenario]]) -> list[Scenario]:
        n = state.n_scenarios
        return [replace(sc, id=f"s{n + k:05d}-g{gid:03d}") for k, (gid, sc) in enumerate(scenarios)]

    # Engine.commit's sequence, with the last round's partial buffers already summarized
    # by their groups (ids after the round's own scenarios, as lock-step numbers them).
    state.n_events += sim.events.append(asdict(e) for e in events)
    own = numbered([(gid, sc) for gid in sorted(done) for sc in done[gid].scenarios])
    state.n_scenarios += sim.scenarios.append(asdict(sc) for sc in own)
    state.round = r
    state.stopped = sim.stop_reason(state)
    if state.stopped and sim.cfg.flush_partial:
        flushed = numbered([(gid, sc) for gid in sorted(done) for sc in done[gid].flushed])
        rest = sim.summarize(state, [g for g, buf in state.buffers.items() if buf])
        for k, sc in enumerate(rest):  # after the flushed ones
            rest[k] = replace(sc, id=f"s{state.n_scenarios + len(flushed) + k:05d}-g{sc.group:03d}")
        state.n_scenarios += sim.scenarios.append(asdict(sc) for sc in flushed + rest)
    sim.save_state(state)
    if state.stopped:
        s.stop_at = r
    if sim.on_round:
        sim.on_round(r, round_stats(s, r, events, done, state))


def round_stats(
    s: GroupScheduler, r: int, events: list[Event], done: dict[int, GroupRound], state: SimState
) -> dict:
    """The `on_round` stats of a committed round, as lock-step reports them."""
    # LLM spend per round is the spend between two commits: groups overlap rounds.
    now = s.sim.roles.ledger()
    before, s.ledger_before = s.ledger_before, now["total"]
    return {
        "round": r,
        "active_agents": len(events),
        "events": len(events),
        "scenarios_total": state.n_scenarios,
        "routing_fallbacks": sum(g.fallbacks for g in done.values()),
        "observations": sum(len(e.observers) for e in events),
        "inter_group_deliveries": sum(g.deliveries for g in done.values()),
        "agents_done": sum(a.done for a in state.agents),
        **round_spend(before, now),
    }
