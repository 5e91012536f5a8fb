"""Groups that never wait for each other: `simulation.schedule: groups`.

The lock-step engine (`Simulation.step`) runs a round as global phases: every agent acts,
then every modulator routes, and so on, each phase waiting for the slowest request of all
groups. Here every group runs its own steps (a phase of one round, matrix/sim/phases.py)
as soon as what the step reads is ready, so the requests of all groups, and the
independent phases of one group (sharing beside routing; memories, plans and goal checks
beside routing and the summary; the next round's actions beside the summary), are in
flight together up to the backend's concurrency (an OpenAI-compatible server; in-process
backends take one call at a time).

How it runs: one coordinator thread owns the simulation state. It starts a step when the
steps it depends on (`phases.dependencies`, from each phase's reads and writes) are done,
handing the step a copy of exactly what the phase reads: whatever else the step could
see (memories, plans, inboxes, a group's memory it does not read) is replaced by a marker,
`NOT_GIVEN`, so a phase that read something it was not given would send the marker in its
prompt, not a stale value. The step's LLM call runs on a worker thread; its writes land
back in the state on the coordinator, in lock-step order for each resource.

What stays global, and why results equal the lock-step engine's:
- news: a group routes round r's inter-group news after every group has decided, in round
  r-1, whom to tell (`phases.CROSS_GROUP`, the one cross-group dependency); its inbound
  queue is built from those decisions in sender order, as in lock-step;
- rounds are a logical clock: a group's state as of the end of round r is kept when its
  last step of round r is done (a step of round r+1 that changed something first saved
  what round r left there), and when every group has finished round r its rows are
  committed in lock-step order (events by agent, scenarios by group, ids numbered then)
  with a checkpoint of every group's state as of round r. A resumed run restarts every
  group after the last committed round, so resume is exact;
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
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from matrix.sim import agents as agent_ops
from matrix.sim.communication import Group
from matrix.sim.engine import SimState, Simulation
from matrix.sim.phases import CROSS_GROUP, PHASES, Step, dependencies, phase_specs
from matrix.sim.schemas import Agent, Event, Scenario

log = logging.getLogger(__name__)

# What a step finds in place of state its phase does not read (see the module docstring).
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


def _copied(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value  # lists of texts; the rest immutable


@dataclass
class _Out:
    """What a step's worker returns, applied on the coordinator."""

    agents: list[Agent] = field(default_factory=list)  # copies holding the step's writes
    value: Any = None


@dataclass
class _GroupRound:
    """One group's finished round, kept until every group has finished it."""

    events: list[Event]
    scenarios: list[Scenario]  # ids are given at commit
    flushed: list[Scenario]  # the last round's partial buffer (scenario.flush_partial)
    agents: dict[int, dict]  # member index -> its row as of the end of the round
    group: dict
    buffer: list[dict]
    deliveries: int = 0
    fallbacks: int = 0


@dataclass
class _Group:
    """A group's progress: started and done steps, each round's results until kept."""

    gid: int
    todo: list[Step]  # steps not started yet, in lock-step order
    started: set[Step] = field(default_factory=set)
    done: set[Step] = field(default_factory=set)
    rounds: dict[int, dict] = field(default_factory=dict)  # round -> results so far
    before: dict[int, dict] = field(default_factory=dict)  # round -> resource -> value left
    finished_through: int = 0


class GroupScheduler:
    """Runs `sim` with each group's steps started as soon as their inputs are ready;
    returns the last committed state."""

    def __init__(self, sim: Simulation, state: SimState):
        if sim.comm.mode == "random":
            raise ValueError(
                "simulation.schedule=groups: communication.mode=random routes to agents of "
                "every group; use schedule=lockstep with it"
            )
        self.sim = sim
        self.live = state  # the groups' working state, changed on the coordinator only
        self.committed = SimState.from_json(copy.deepcopy(state.to_json()))
        self.first_round = state.round + 1
        cfg = sim.cfg
        self.specs = phase_specs(sim.prompts)
        self.deps = dependencies(
            self.specs,
            range(self.first_round, cfg.max_rounds + 1),
            cfg.revise_plan_every,
            cfg.goal_check_every,
        )
        self.round_steps: dict[int, set[Step]] = {}
        for step in self.deps:
            self.round_steps.setdefault(step[0], set()).add(step)
        self.groups = {
            g.id: _Group(g.id, list(self.deps), finished_through=state.round) for g in state.groups
        }
        # other groups as an inter-group prompt sees them: their descriptions only
        self.stubs = [
            Group(g.id, list(g.members), g.description, [NOT_GIVEN], []) for g in state.groups
        ]
        self.first_inbound = {g.id: list(g.inbound) for g in state.groups}
        self.news: dict[int, dict[int, tuple[tuple[int, ...], list[dict]]]] = {}
        self.finished: dict[int, dict[int, _GroupRound]] = {}
        self.stop_at: int | None = None
        self.error: BaseException | None = None
        self.events: queue.Queue = queue.Queue()
        self.in_flight = 0
        self.pool: ThreadPoolExecutor | None = None
        self._ledger_before = sim.roles.ledger()["total"]

    # -- the run ------------------------------------------------------------------------
    def run(self) -> SimState:
        if self.committed.stopped:
            return self.committed
        for role in ("agent", "summarizer", "modulator"):  # roles are built before threads
            if role in self.sim.roles.cfg.roles:
                self.sim.roles.get(role)
        workers = len(self.groups) * len(PHASES)  # calls wait on the backend's own cap
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step") as pool:
            self.pool = pool
            try:
                self._launch_all()
                while self.in_flight:
                    gid, step, fut = self.events.get()
                    self.in_flight -= 1
                    try:
                        out = fut.result()
                    except BaseException as e:  # let the other calls return, then fail
                        self.error = self.error or e
                        continue
                    if self.error is None and not self._beyond_stop(step[0]):
                        self._apply(gid, step, out)
            except BaseException as e:
                self.error = self.error or e
                while self.in_flight:  # the pool waits for them anyway
                    self.events.get()
                    self.in_flight -= 1
        if self.error is not None:
            raise self.error
        last = self.stop_at if self.stop_at is not None else self.sim.cfg.max_rounds
        if self.committed.round < last:
            raise RuntimeError(
                f"simulation.schedule=groups: no step could start after round "
                f"{self.committed.round} (a dependency cycle in matrix/sim/phases.py)"
            )
        return self.committed

    def _beyond_stop(self, r: int) -> bool:
        return self.stop_at is not None and r > self.stop_at

    # -- starting steps -----------------------------------------------------------------
    def _launch_all(self) -> None:
        for gid in self.groups:
            self._launch(gid)

    def _launch(self, gid: int) -> None:
        """Start every step of `gid` whose inputs are ready (in lock-step order)."""
        g = self.groups[gid]
        progress = True
        while progress and self.error is None:
            progress = False
            for step in list(g.todo):
                if self._beyond_stop(step[0]):
                    break
                if step[0] > g.finished_through + 2:  # two rounds ahead at most
                    break
                if self._ready(g, step):
                    g.todo.remove(step)
                    g.started.add(step)
                    if self._start(g, step):  # done at once: may free later steps
                        progress = True
                        break

    def _ready(self, g: _Group, step: Step) -> bool:
        d = self.deps[step]
        if not (set(d.done) <= g.done and set(d.started) <= g.started):
            return False
        cross = CROSS_GROUP.get(step[1])
        if cross and step[0] > self.first_round:
            return len(self.news.get(step[0] - 1, {})) == len(self.groups)
        return True

    def _start(self, g: _Group, step: Step) -> bool:
        """Prepare the step; submit its call, or apply it now when it has none. Returns
        whether it is already done."""
        call = getattr(self, f"_prepare_{step[1]}")(g, step[0])
        if call is None:
            self._apply(g.gid, step, _Out())
            return True
        self.in_flight += 1
        fut = self.pool.submit(call)
        fut.add_done_callback(lambda f, gid=g.gid: self.events.put((gid, step, f)))
        return False

    # -- the phases: prepare (coordinator) -> call (worker) -> apply (coordinator) --------
    def _members(self, gid: int) -> list[Agent]:
        return [self.live.agents[i] for i in self.live.groups[gid].members]

    def _copies(self, phase: str, agents: list[Agent]) -> list[Agent]:
        return [given(a, self.specs[phase].reads) for a in agents]

    def _prepare_act(self, g: _Group, r: int) -> Callable[[], _Out] | None:
        copies = self._copies("act", [a for a in self._members(g.gid) if not a.done])
        if not copies:  # every member reached its goal: nothing to ask
            return None
        return lambda: _Out(copies, self.sim.act(copies, r))

    def _group_copy(self, gid: int, phase: str, inbound: list[dict]) -> Group:
        group = self.live.groups[gid]
        memory = list(group.memory) if "group_memory" in self.specs[phase].reads else [NOT_GIVEN]
        return Group(gid, list(group.members), group.description, memory, inbound)

    def _prepare_route(self, g: _Group, r: int):
        if r == self.first_round:
            inbound = list(self.first_inbound[g.gid])
        else:
            inbound = self._queue(g.gid, self.news[r - 1])
        group = self._group_copy(g.gid, "route", inbound)
        view = {a.index: a for a in self._copies("route", self._members(g.gid))}
        actions = dict(g.rounds[r]["actions"])
        return lambda: _Out(value=self.sim.comm.route(r, actions, view, [group]))

    def _prepare_share(self, g: _Group, r: int):
        actions = dict(g.rounds[r]["actions"])
        actors = sorted(actions)  # the round's events are one per action, by agent
        if not actors:
            return None
        groups = list(self.stubs)
        groups[g.gid] = self._group_copy(g.gid, "share", [])
        view = {a.index: a for a in self._copies("share", self._members(g.gid))}
        sim = self.sim
        return lambda: _Out(value=sim.comm.inter_group({g.gid: actors}, actions, view, groups))

    def _prepare_summary(self, g: _Group, r: int):
        res = g.rounds[r]
        sim, gid = self.sim, g.gid
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
            agents={a.index: a for a in self._copies("summary", self._members(gid))},
            groups={gid: group},
            buffers={gid: buffer},
        )
        res["flush"] = not full
        return lambda: _Out(value=(sim.summarize(view, [gid]), group, view.buffers[gid]))

    def _prepare_memory(self, g: _Group, r: int):
        cfg = self.sim.cfg
        members = self._members(g.gid)
        if not any(len(a.memory) > cfg.memory_max_items for a in members):
            return None
        copies = self._copies("memory", members)
        summarizer = self.sim.roles.get("summarizer")

        def call():
            prompts = self.sim.prompts
            agent_ops.summarize_memories(
                summarizer, prompts, copies, cfg.memory_max_items, cfg.memory_keep
            )
            return _Out(copies)

        return call

    def _prepare_plan(self, g: _Group, r: int):
        copies = self._copies("plan", [a for a in self._members(g.gid) if not a.done])
        if not copies:
            return None
        llm = self.sim.agent_llm
        return lambda: _Out(copies, agent_ops.revise_plans(llm, self.sim.prompts, copies, r))

    def _prepare_goal_check(self, g: _Group, r: int):
        copies = self._copies("goal_check", [a for a in self._members(g.gid) if not a.done])
        if not copies:
            return None
        llm = self.sim.agent_llm
        return lambda: _Out(copies, agent_ops.check_goals(llm, self.sim.prompts, copies, r))

    # -- applying a step's writes ----------------------------------------------------------
    def _apply(self, gid: int, step: Step, out: _Out) -> None:
        g = self.groups[gid]
        r, phase = step
        writes = self.specs[phase].writes
        self._keep_before(g, r, writes)
        for copy_ in out.agents:  # the agent fields the phase writes, nothing else
            live = self.live.agents[copy_.index]
            for res in writes & AGENT_FIELDS.keys():
                for name in AGENT_FIELDS[res]:
                    setattr(live, name, getattr(copy_, name))
        res = g.rounds.setdefault(r, {"scenarios": [], "flushed": []})
        getattr(self, f"_apply_{phase}", lambda *a: None)(g, r, res, out)
        g.done.add(step)
        if g.done >= self.round_steps[r] and r == g.finished_through + 1:
            self._finish_round(g, r)
        self._launch(gid)

    def _apply_act(self, g: _Group, r: int, res: dict, out: _Out) -> None:
        res["actions"] = out.value or {}

    def _apply_route(self, g: _Group, r: int, res: dict, out: _Out) -> None:
        sim, state = self.sim, self.live
        routing = out.value
        res["routing"] = routing
        res["events"] = sim.record_events(r, res["actions"], routing.decisions, state)
        sim.deliver_news(routing.deliveries, state)
        for a in self._members(g.gid):
            a.inbox = a.inbox[-sim.cfg.inbox_max :]

    def _apply_share(self, g: _Group, r: int, res: dict, out: _Out) -> None:
        sim, gid = self.sim, g.gid
        forwarded = out.value or {}
        if sim.owns_group is not None:  # a shard forwards only to groups it simulates
            forwarded = {
                k: tuple(t for t in ts if sim.owns_group(t)) for k, ts in forwarded.items()
            }
        res["forwarded"] = forwarded
        actions = res["actions"]
        news = [
            {"group": gid, "agent": i, "name": self.live.agents[i].name, "action": actions[i]}
            | {"round": r}
            for i in sorted(actions)
        ]
        self.news.setdefault(r, {})[gid] = (tuple(forwarded.get(gid, ())), news)
        if len(self.news[r]) == len(self.groups):  # every group may route round r+1's news
            self._launch_all()

    def _apply_summary(self, g: _Group, r: int, res: dict, out: _Out) -> None:
        gid = g.gid
        if out.value is None:
            self.live.buffers[gid] = res["buffer"]
            return
        scenarios, group, buffer = out.value
        self.live.buffers[gid] = buffer
        self.live.groups[gid].memory = group.memory
        res["flushed" if res.get("flush") else "scenarios"] = scenarios

    def _keep_before(self, g: _Group, r: int, writes: frozenset[str]) -> None:
        """Before a step of round r changes something, an unfinished earlier round keeps
        what it left there (its final value: the step waited for every earlier write)."""
        for q in range(g.finished_through + 1, r):
            kept = g.before.setdefault(q, {})
            for res in writes:
                if res not in kept:
                    kept[res] = self._value(g.gid, res)

    def _value(self, gid: int, res: str) -> Any:
        if res in AGENT_FIELDS:
            return {
                a.index: {n: _copied(getattr(a, n)) for n in AGENT_FIELDS[res]}
                for a in self._members(gid)
            }
        if res == "group_memory":
            return list(self.live.groups[gid].memory)
        if res == "buffer":
            return list(self.live.buffers.get(gid, []))
        return None  # a round's own results (actions, routing...) are kept by round

    # -- rounds: a group's end of round, then the commit of every group's ---------------------
    def _finish_round(self, g: _Group, r: int) -> None:
        kept = g.before.pop(r, {})
        agents = {}
        for a in self._members(g.gid):
            row = a.to_row()  # a copy (dataclasses.asdict)
            for res in AGENT_FIELDS:
                if res in kept:
                    row.update(kept[res][a.index])
            agents[a.index] = row
        group = asdict(self.live.groups[g.gid])
        if "group_memory" in kept:
            group["memory"] = kept["group_memory"]
        buffer = kept.get("buffer", self._value(g.gid, "buffer"))
        res = g.rounds.pop(r)
        routing, events = res["routing"], res["events"]
        g.finished_through = r
        self.finished.setdefault(r, {})[g.gid] = _GroupRound(
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
        while len(self.finished.get(self.committed.round + 1, {})) == len(self.groups):
            if self._beyond_stop(self.committed.round + 1):
                break
            self._commit(self.committed.round + 1)
        if (
            r == g.finished_through
            and r + 1 in g.rounds
            and g.done >= self.round_steps.get(r + 1, {None})
        ):
            self._finish_round(g, r + 1)

    def _queue(self, gid: int, decided: dict) -> list[dict]:
        """Events other groups sent `gid` in a round, in sender order (as lock-step queues
        them), the newest `inbound_max` kept."""
        inbound: list[dict] = []
        for sender in sorted(decided):
            targets, news = decided[sender]
            if gid in targets:
                inbound = (inbound + news)[-self.sim.cfg.inbound_max :]
        return inbound

    def _commit(self, r: int) -> None:
        """Every group's round r, committed as the lock-step engine commits it."""
        sim = self.sim
        done = self.finished.pop(r)
        state = self.committed
        for gid, g in sorted(done.items()):
            for i, row in g.agents.items():
                state.agents[i] = Agent.from_row(row)
            state.groups[gid] = Group(**g.group)
            state.buffers[gid] = g.buffer
        # what each group queued for its next round (kept in state.json, as lock-step does)
        for gid in done:
            state.groups[gid].inbound = self._queue(gid, self.news[r])
        self.news.pop(r - 1, None)
        events = sorted((e for g in done.values() for e in g.events), key=lambda e: e.agent)

        def numbered(scenarios: list[tuple[int, Scenario]]) -> list[Scenario]:
            n = state.n_scenarios
            return [
                replace(s, id=f"s{n + k:05d}-g{gid:03d}") for k, (gid, s) in enumerate(scenarios)
            ]

        # Engine.commit's sequence, with the last round's partial buffers already summarized
        # by their groups (ids after the round's own scenarios, as lock-step numbers them).
        state.n_events += sim.events.append(asdict(e) for e in events)
        own = numbered([(gid, s) for gid in sorted(done) for s in done[gid].scenarios])
        state.n_scenarios += sim.scenarios.append(asdict(s) for s in own)
        state.round = r
        state.stopped = sim.stop_reason(state)
        if state.stopped and sim.cfg.flush_partial:
            flushed = numbered([(gid, s) for gid in sorted(done) for s in done[gid].flushed])
            rest = sim.summarize(state, [g for g, buf in state.buffers.items() if buf])
            for k, s in enumerate(rest):  # after the flushed ones
                rest[k] = replace(
                    s, id=f"s{state.n_scenarios + len(flushed) + k:05d}-g{s.group:03d}"
                )
            state.n_scenarios += sim.scenarios.append(asdict(s) for s in flushed + rest)
        sim.save_state(state)
        if state.stopped:
            self.stop_at = r
        if sim.on_round:
            sim.on_round(r, self._stats(r, events, done, state))

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
