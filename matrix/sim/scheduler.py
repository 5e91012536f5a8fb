"""Groups that never wait for each other: `simulation.schedule: groups`.

The lock-step engine (`Simulation.step`) runs a round as global phases: every agent acts,
then every modulator routes, and so on, each phase waiting for the slowest request of all
groups. Here each group runs its own rounds on its own thread (act -> route and share ->
scenario -> memories, plans, goal checks -> next round) and moves on as soon as its own
calls return, so the requests of all groups are in flight together up to the backend's
concurrency (an OpenAI-compatible server; in-process backends take one call at a time).

What stays global, and why results equal the lock-step engine's:
- news: a group routes round r's inter-group news after every group has decided, in round
  r-1, whom to tell (the one cross-group dependency; a group waits for it, nothing else);
  its inbound queue is built from those decisions in sender order, as in lock-step;
- rounds are a logical clock: when the last group finishes round r, its rows are committed
  in lock-step order (events by agent, scenarios by group, ids numbered then) with a
  checkpoint of every group's state as of round r. A group may already be in round r+1;
  a resumed run restarts every group after the last committed round, so resume is exact;
- each call asks what the lock-step call for that group asks, with the same seeds. With a
  backend whose answer depends only on the request (servers, vLLM), the rows are the
  lock-step rows; the in-process HF backend seeds by position in its batch, so there they
  differ from lock-step's but are still reproducible.

Only `structured` and `none` communication run here: `random` routes to any agent of the
population, so no group can move on alone.
"""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from matrix.sim.communication import Group
from matrix.sim.engine import SimState, Simulation
from matrix.sim.schemas import Agent, Event, Scenario

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """The run stopped at an earlier round than the one a group is in."""


@dataclass
class _GroupRound:
    """One group's finished round, kept until every group has finished it."""

    events: list[Event]
    scenarios: list[Scenario]  # ids are given at commit
    agents: dict[int, dict]  # member index -> its row as of the end of the round
    group: dict
    buffer: list[dict]
    deliveries: int = 0
    fallbacks: int = 0


@dataclass
class _Shared:
    cond: threading.Condition = field(default_factory=threading.Condition)
    news: dict[int, dict[int, tuple[tuple[int, ...], list[dict]]]] = field(default_factory=dict)
    finished: dict[int, dict[int, _GroupRound]] = field(default_factory=dict)
    stop_at: int | None = None
    error: BaseException | None = None


class GroupScheduler:
    """Runs `sim` with each group on its own thread; returns the last committed state."""

    def __init__(self, sim: Simulation, state: SimState):
        if sim.comm.mode == "random":
            raise ValueError(
                "simulation.schedule=groups: communication.mode=random routes to agents of "
                "every group; use schedule=lockstep with it"
            )
        self.sim = sim
        self.live = state  # the groups' working state; group g touches only its own parts
        self.committed = SimState.from_json(copy.deepcopy(state.to_json()))
        self.first_round = state.round + 1
        self.shared = _Shared()
        self._ledger_before = sim.roles.ledger()["total"]

    # -- the run ------------------------------------------------------------------------
    def run(self) -> SimState:
        if self.committed.stopped:
            return self.committed
        for role in ("agent", "summarizer", "modulator"):  # roles are built before threads
            if role in self.sim.roles.cfg.roles:
                self.sim.roles.get(role)
        groups = self.live.groups
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="group") as pool:
            futures = [pool.submit(self._group_loop, g.id) for g in groups]
            for f in futures:
                f.result()
        if self.shared.error is not None:
            raise self.shared.error
        return self.committed

    def _group_loop(self, gid: int) -> None:
        r = self.first_round
        try:
            while r <= self.sim.cfg.max_rounds:
                with self.shared.cond:
                    if self.shared.error is not None or (
                        self.shared.stop_at is not None and r > self.shared.stop_at
                    ):
                        return
                result = self._group_round(gid, r)
                with self.shared.cond:
                    self.shared.finished.setdefault(r, {})[gid] = result
                    if len(self.shared.finished[r]) == len(self.live.groups):
                        self._commit(r)
                    self.shared.cond.notify_all()
                r += 1
        except _Stopped:
            return
        except BaseException as e:  # wake every waiting group, then fail the run
            with self.shared.cond:
                self.shared.error = self.shared.error or e
                self.shared.cond.notify_all()
            raise

    # -- one group, one round -------------------------------------------------------------
    def _group_round(self, gid: int, r: int) -> _GroupRound:
        sim, state = self.sim, self.live
        group = state.groups[gid]
        members = [state.agents[i] for i in group.members]
        active = [a for a in members if not a.done]
        actions = sim.act(active, r)
        if r > self.first_round:  # round r-1's news for this group, once all groups decided
            group.inbound = self._inbound(gid, r - 1)
        routing = sim.comm.route(r, actions, state.agents, [group])
        group.inbound = []
        events = sim.record_events(r, actions, routing.decisions, state)
        sim.deliver_news(routing.deliveries, state)
        forwarded = self._share(gid, r, actions, events)
        for a in members:
            a.inbox = a.inbox[-sim.cfg.inbox_max :]
        sim.buffer_steps(r, events, routing.deliveries, forwarded, state)
        buf = state.buffers.get(gid, [])
        scenarios = sim.summarize(state, [gid]) if len(buf) >= sim.cfg.interval else []
        self._update_members(members, r)
        return _GroupRound(
            events=events,
            scenarios=scenarios,
            agents={a.index: copy.deepcopy(a.to_row()) for a in members},
            group=copy.deepcopy(asdict(group)),
            buffer=copy.deepcopy(state.buffers.get(gid, [])),
            deliveries=len(routing.deliveries),
            fallbacks=sum(1 for e in events if e.routing == "fallback")
            + sum(1 for d in routing.deliveries if d.how == "fallback"),
        )

    def _share(self, gid: int, r: int, actions, events: list[Event]) -> dict:
        """This group's inter-group decision, published for the receivers' next round."""
        sim, state = self.sim, self.live
        actors = [e.agent for e in events]
        forwarded = (
            sim.comm.inter_group({gid: actors}, actions, state.agents, state.groups)
            if actors
            else {}
        )
        if sim.owns_group is not None:
            forwarded = {
                g: tuple(t for t in ts if sim.owns_group(t)) for g, ts in forwarded.items()
            }
        targets = tuple(forwarded.get(gid, ()))
        news = [
            {
                "group": gid,
                "agent": i,
                "name": state.agents[i].name,
                "action": actions[i],
                "round": r,
            }
            for i in actors
        ]
        with self.shared.cond:
            self.shared.news.setdefault(r, {})[gid] = (targets, news)
            self.shared.cond.notify_all()
        return forwarded

    def _inbound(self, gid: int, r: int) -> list[dict]:
        """Events other groups sent `gid` in round r, in sender order (as lock-step queues
        them), the newest `inbound_max` kept. Waits until every group has decided."""
        n = len(self.live.groups)
        with self.shared.cond:
            self.shared.cond.wait_for(
                lambda: (
                    self.shared.error is not None
                    or (self.shared.stop_at is not None and r >= self.shared.stop_at)
                    or len(self.shared.news.get(r, {})) == n
                )
            )
            if self.shared.error is not None or len(self.shared.news.get(r, {})) < n:
                raise _Stopped
            decided = self.shared.news[r]
        return self._queue(gid, decided)

    def _queued(self, gid: int, r: int) -> list[dict]:
        return self._queue(gid, self.shared.news[r])

    def _queue(self, gid: int, decided: dict) -> list[dict]:
        inbound: list[dict] = []
        for sender in sorted(decided):
            targets, news = decided[sender]
            if gid in targets:
                inbound = (inbound + news)[-self.sim.cfg.inbound_max :]
        return inbound

    def _update_members(self, members: list[Agent], r: int) -> None:
        self.sim.update_agents(r, members)

    def _commit(self, r: int) -> None:
        """Called with the lock held, by the group that finishes round r last."""
        done = self.shared.finished.pop(r)
        state = self.committed
        for gid, g in sorted(done.items()):
            for i, row in g.agents.items():
                state.agents[i] = Agent.from_row(row)
            state.groups[gid] = Group(**g.group)
            state.buffers[gid] = g.buffer
        # what each group queued for its next round (kept in state.json, as lock-step does)
        for gid in done:
            state.groups[gid].inbound = self._queued(gid, r)
        self.shared.news.pop(r - 1, None)
        events = sorted((e for g in done.values() for e in g.events), key=lambda e: e.agent)
        scenarios = []
        for gid in sorted(done):
            for s in done[gid].scenarios:
                n = state.n_scenarios + len(scenarios)
                scenarios.append(replace(s, id=f"s{n:05d}-g{gid:03d}"))
        self.sim.commit(r, events, scenarios, state)  # rows, stop reason, flush, state.json
        if state.stopped:
            self.shared.stop_at = r
        if self.sim.on_round:
            self.sim.on_round(r, self._stats(r, events, done, state))

    def _stats(self, r: int, events: list[Event], done: dict[int, _GroupRound], state) -> dict:
        # LLM spend per round is the spend between two commits: groups overlap rounds.
        now = self.sim.roles.ledger()
        before, self._ledger_before = self._ledger_before, now["total"]
        return {
            "round": r,
            "active_agents": len(events),
            "events": len(events),
            "scenarios_total": state.n_scenarios,
            "routing_fallbacks": sum(g.fallbacks for g in done.values()),
            "observations": sum(len(e.observers) for e in events),
            "inter_group_deliveries": sum(g.deliveries for g in done.values()),
            "agents_done": sum(a.done for a in state.agents),
            "llm_requests": now["total"]["requests"] - before["requests"],
            "llm_calls": now["total"]["calls"] - before["calls"],
            "prompt_tokens": now["total"]["prompt_tokens"] - before["prompt_tokens"],
            "completion_tokens": now["total"]["completion_tokens"] - before["completion_tokens"],
            "max_batch": max((u["max_batch"] for u in now["roles"].values()), default=0),
        }
