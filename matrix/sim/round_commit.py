"""The commit of finished rounds for the `groups` schedule (matrix/sim/scheduler.py).

Groups run ahead of each other, so a round ends twice. A group's round ends when its last
step of that round is done (`GroupSteps.finish` keeps its state as of then). Every group's
round commits when the last group finished it (`RoundCommits.add`), rounds in order, as the
lock-step engine commits one: events by agent, scenarios by group with ids numbered then,
the state checkpointed, the round's stats reported.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, replace

from matrix.sim.communication import Group, RoutingCounts
from matrix.sim.engine import Simulation, round_spend
from matrix.sim.group_steps import GroupRound, queue_news
from matrix.sim.schemas import Agent, Event, Scenario
from matrix.sim.state import SimState

# round -> sender group -> (the groups it tells, its news), as GroupSteps.news holds them
News = Mapping[int, Mapping[int, tuple[tuple[int, ...], list[dict]]]]


class RoundCommits:
    """The last committed state, and each group's finished rounds until all groups have
    finished them."""

    def __init__(self, sim: Simulation, state: SimState):
        self.sim = sim
        self.committed = SimState.from_json(copy.deepcopy(state.to_json()))
        self.n_groups = len(state.groups)
        self.finished: dict[int, dict[int, GroupRound]] = {}
        self.stop_at: int | None = None  # the round the run stopped at, once committed
        self.ledger_before = sim.roles.ledger()["total"]  # at the last commit

    def beyond_stop(self, r: int) -> bool:
        """Whether round r comes after the round the run stopped at (nothing of it applies)."""
        return self.stop_at is not None and r > self.stop_at

    def add(self, gid: int, r: int, finished: GroupRound, news: News) -> list[int]:
        """Keep group `gid`'s round r; commit every round all groups have finished, in
        order. Returns the rounds committed."""
        self.finished.setdefault(r, {})[gid] = finished
        committed = []
        while len(self.finished.get(self.committed.round + 1, {})) == self.n_groups:
            if self.beyond_stop(self.committed.round + 1):
                break
            committed.append(self.committed.round + 1)
            self.commit(committed[-1], news[committed[-1]])
        return committed

    def commit(self, r: int, news: Mapping) -> None:
        """Every group's round r, committed as the lock-step engine commits it; `news`: what
        each group decided to tell in round r."""
        sim, state = self.sim, self.committed
        done = self.finished.pop(r)
        for gid, g in sorted(done.items()):
            for i, row in g.agents.items():
                state.agents[i] = Agent.from_row(row)
            state.groups[gid] = Group(**g.group)
            state.buffers[gid] = g.buffer
        # what each group queued for its next round (kept in state.json, as lock-step does)
        for gid in done:
            state.groups[gid].inbound = queue_news(news, gid, sim.cfg.inbound_max)
        events = sorted((e for g in done.values() for e in g.events), key=lambda e: e.agent)

        def numbered(scenarios: list[tuple[int, Scenario]]) -> list[Scenario]:
            n = state.n_scenarios
            return [
                replace(sc, id=f"s{n + k:05d}-g{gid:03d}") for k, (gid, sc) in enumerate(scenarios)
            ]

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
                n = state.n_scenarios + len(flushed) + k
                rest[k] = replace(sc, id=f"s{n:05d}-g{sc.group:03d}")
            state.n_scenarios += sim.scenarios.append(asdict(sc) for sc in flushed + rest)
        sim.save_state(state)
        if state.stopped:
            self.stop_at = r
        if sim.on_round:
            sim.on_round(r, self.round_stats(r, events, done))

    def round_stats(self, r: int, events: list[Event], done: dict[int, GroupRound]) -> dict:
        """The `on_round` stats of a committed round, as lock-step reports them."""
        # LLM spend per round is the spend between two commits: groups overlap rounds.
        now = self.sim.roles.ledger()
        before, self.ledger_before = self.ledger_before, now["total"]
        return {
            "round": r,
            "active_agents": len(events),
            "events": len(events),
            "scenarios_total": self.committed.n_scenarios,
            "routing_fallbacks": sum(g.fallbacks for g in done.values()),
            "observations": sum(len(e.observers) for e in events),
            "inter_group_deliveries": sum(g.deliveries for g in done.values()),
            **RoutingCounts.total(g.routing for g in done.values()).stats(),
            "agents_done": sum(a.done for a in self.committed.agents),
            **round_spend(before, now),
        }
