"""The simulation loop: rounds of actions, routing, scenario formation, checkpoints.

A round (`Simulation.step`): every active agent acts (one batched call); each group's
modulator routes, in one call, all of its members' actions and the news other groups sent
it (`Communication.route`); observations land in inboxes for the next round; each sending
modulator picks the groups that hear of its events (queued for their next step); every
`scenario.interval` steps the summarizer turns a group's buffered raw steps into a scenario,
which joins its memory; then memories are folded, plans revised and goals checked.

Crash safety: events.jsonl and scenarios.jsonl are appended during a round and state.json
is written atomically at the round's end. state.json is the commit point: on resume both
JSONL files are truncated to the row counts it records, so a killed run continues with no
lost and no duplicated rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from matrix.common.io import JsonlLog, read_json, write_json
from matrix.llm.prompts import render_prompt
from matrix.llm.role_llm import RoleLLM
from matrix.llm.roles import Roles
from matrix.sim import agents as agent_ops
from matrix.sim.communication import Communication, Decision, Delivery, Routing
from matrix.sim.config import SimConfig
from matrix.sim.schemas import Agent, Event, Scenario
from matrix.sim.state import SimState

log = logging.getLogger(__name__)


class Simulation:
    def __init__(
        self,
        out_dir: Path,
        cfg: SimConfig,
        roles: Roles,
        comm: Communication,
        agent_prompts: Mapping,
        scenario_prompt: Mapping,
        on_round: Callable[[int, dict], None] | None = None,
    ):
        self.dir = Path(out_dir)
        self.cfg = cfg
        self.roles = roles
        self.comm = comm
        self.prompts = agent_prompts
        self.scenario_prompt = scenario_prompt
        self.on_round = on_round
        self.events = JsonlLog(self.dir / "events.jsonl")
        self.scenarios = JsonlLog(self.dir / "scenarios.jsonl")
        self.state_path = self.dir / "state.json"
        self.owns_group: Callable[[int], bool] | None = None
        self.on_phase: Callable[[int, str], None] | None = None

    @property
    def agent_llm(self) -> RoleLLM:
        return self.roles.get("agent")

    # -- checkpoint ---------------------------------------------------------------------
    def load_state(self) -> SimState | None:
        if not self.state_path.exists():
            return None
        state = SimState.from_json(read_json(self.state_path))
        dropped = self.events.truncate(state.n_events) + self.scenarios.truncate(state.n_scenarios)
        if dropped:
            log.info("resume: dropped %d rows written after the last checkpoint", dropped)
        log.info(
            "resuming after round %d (%d events, %d scenarios)",
            state.round,
            state.n_events,
            state.n_scenarios,
        )
        return state

    def save_state(self, state: SimState) -> None:
        write_json(self.state_path, state.to_json())

    # -- one round ----------------------------------------------------------------------
    def step(self, state: SimState) -> None:
        """One round: act, route, share between groups, form scenarios, update agents, commit."""
        r = state.round + 1
        before = self.roles.ledger()["total"]
        active = [a for a in state.agents if not a.done]
        actions = self.act(active, r)
        self.phase_done(r, "act")
        routing = self.comm.route(r, actions, state.agents, state.groups)
        self.phase_done(r, "route")
        for g in state.groups:  # the modulators have routed every queued inbound event
            g.inbound = []
        events = self.record_events(r, actions, routing.decisions, state)
        self.deliver_news(routing.deliveries, state)
        forwarded = self.share_between_groups(actions, events, state)
        self.phase_done(r, "share")
        for a in state.agents:
            a.inbox = a.inbox[-self.cfg.inbox_max :]
        self.buffer_steps(r, events, routing.deliveries, forwarded, state)
        ready = [g for g, buf in state.buffers.items() if len(buf) >= self.cfg.interval]
        scenarios = self.summarize(state, ready)
        self.phase_done(r, "summary")
        self.update_agents(r, state.agents)
        self.phase_done(r, "update")
        self.commit(r, events, scenarios, state)
        if self.on_round:
            self.on_round(r, self.round_stats(r, before, active, events, routing, state))

    def phase_done(self, r: int, phase: str) -> None:
        """Tells `on_phase` (the progress display) that a phase of round r ended."""
        if self.on_phase:
            self.on_phase(r, phase)

    def act(self, active: list[Agent], r: int) -> dict[int, str]:
        """Agent index -> its action this round (one batched call)."""
        texts = agent_ops.act(
            self.agent_llm, self.prompts, active, r, seed=self.cfg.seed * 100_003 + r
        )
        return {a.index: t for a, t in zip(active, texts, strict=True)}

    def record_events(
        self, r: int, actions: dict[int, str], decisions: dict[int, Decision], state: SimState
    ) -> list[Event]:
        """An event per action; each observer finds the action in its inbox next round."""
        agents = state.agents
        events = []
        for i in sorted(actions):
            d, a = decisions[i], agents[i]
            events.append(
                Event(
                    id=f"r{r:04d}-a{i:05d}",
                    round=r,
                    group=a.group,
                    agent=i,
                    agent_name=a.name,
                    action=actions[i],
                    observers=d.observers,
                    routing=d.how,
                    routing_reason=d.reason,
                )
            )
            for o in d.observers:
                agents[o].inbox.append(f"{a.name}: {actions[i]}")
        return events

    def deliver_news(self, deliveries: list[Delivery], state: SimState) -> None:
        """Events from other groups, to the members their receiving modulator chose."""
        for d in deliveries:
            for o in d.observers:
                state.agents[o].inbox.append(f"(from another community) {d.name}: {d.action}")

    def share_between_groups(
        self, actions: dict[int, str], events: list[Event], state: SimState
    ) -> dict[int, tuple[int, ...]]:
        """Inter-group routing: each sending modulator picks the groups that hear of its
        group's events; they queue in those groups' `inbound` for their next step."""
        by_group: dict[int, list[int]] = {}
        for e in events:
            by_group.setdefault(e.group, []).append(e.agent)
        forwarded = self.comm.inter_group(by_group, actions, state.agents, state.groups)
        if self.owns_group is not None:  # a shard forwards only to groups it simulates
            forwarded = {
                g: tuple(t for t in ts if self.owns_group(t)) for g, ts in forwarded.items()
            }
        for gid, targets in sorted(forwarded.items()):
            news = [
                {
                    "group": gid,
                    "agent": i,
                    "name": state.agents[i].name,
                    "action": actions[i],
                    "round": state.round + 1,
                }
                for i in by_group[gid]
            ]
            for t in targets:
                inbound = state.groups[t].inbound + news
                state.groups[t].inbound = inbound[-self.cfg.inbound_max :]
        return forwarded

    def buffer_steps(
        self,
        r: int,
        events: list[Event],
        deliveries: list[Delivery],
        forwarded: dict[int, tuple[int, ...]],
        state: SimState,
    ) -> None:
        """Each group's raw step (who did what, who noticed) joins its scenario buffer."""
        names = [a.name for a in state.agents]
        steps: dict[int, dict] = {}

        def step_of(gid: int) -> dict:
            return steps.setdefault(
                gid,
                {
                    "round": r,
                    "events": [],
                    "agents": [],
                    "lines": [],
                    "to_groups": list(forwarded.get(gid, ())),
                },
            )

        for e in events:
            seen_by = ", ".join(names[o] for o in e.observers) or "nobody"
            s = step_of(e.group)
            s["events"].append(e.id)
            s["agents"].append(e.agent)
            # Reported speech, not a transcript: a small summarizer copies "Name: I ..." lines
            # verbatim and slips into the first person; "Name posted: ..." keeps it reporting.
            s["lines"].append(f'{e.agent_name} posted: "{e.action}" (read by {seen_by})')
        for d in deliveries:
            seen_by = ", ".join(names[o] for o in d.observers) or "nobody"
            step_of(d.group)["lines"].append(
                f'News from another community reached the group: {d.name} posted "{d.action}" '
                f"(read by {seen_by})"
            )
        for gid, s in sorted(steps.items()):
            state.buffers.setdefault(gid, []).append(s)

    def update_agents(self, r: int, agents: list[Agent]) -> None:
        """Between rounds: fold long memories, revise plans and check goals on schedule (for
        every agent, or one group's members under `schedule: groups`)."""
        agent_ops.summarize_memories(
            self.roles.get("summarizer"),
            self.prompts,
            agents,
            self.cfg.memory_max_items,
            self.cfg.memory_keep,
        )
        if self.cfg.revise_plan_every and r % self.cfg.revise_plan_every == 0:
            agent_ops.revise_plans(
                self.agent_llm, self.prompts, [a for a in agents if not a.done], r
            )
        if self.cfg.goal_check_every and r % self.cfg.goal_check_every == 0:
            agent_ops.check_goals(
                self.agent_llm, self.prompts, [a for a in agents if not a.done], r
            )

    def commit(
        self, r: int, events: list[Event], scenarios: list[Scenario], state: SimState
    ) -> None:
        """Rows first, then the state that counts them (the commit point)."""
        state.n_events += self.events.append(asdict(e) for e in events)
        state.n_scenarios += self.scenarios.append(asdict(s) for s in scenarios)
        state.round = r
        state.stopped = self.stop_reason(state)
        if state.stopped and self.cfg.flush_partial:
            rest = self.summarize(state, [g for g, buf in state.buffers.items() if buf])
            state.n_scenarios += self.scenarios.append(asdict(s) for s in rest)
        self.save_state(state)

    def round_stats(
        self,
        r: int,
        before: dict,
        active: list[Agent],
        events: list[Event],
        routing: Routing,
        state: SimState,
    ) -> dict:
        after = self.roles.ledger()
        return {
            "round": r,
            "active_agents": len(active),
            "events": len(events),
            "scenarios_total": state.n_scenarios,
            "routing_fallbacks": sum(1 for e in events if e.routing == "fallback")
            + sum(1 for d in routing.deliveries if d.how == "fallback"),
            "observations": sum(len(e.observers) for e in events),
            "inter_group_deliveries": len(routing.deliveries),
            **routing.counts.stats(),
            "agents_done": sum(a.done for a in state.agents),
            **round_spend(before, after),
        }

    def summarize(self, state: SimState, group_ids: list[int]) -> list[Scenario]:
        if not group_ids:
            return []
        agents = state.agents
        chats, metas = [], []
        for gid in sorted(group_ids):
            buf = state.buffers[gid]
            participants = sorted({i for s in buf for i in s["agents"]})
            log_text = "\n".join(f"- {x}" for s in buf for x in s["lines"])
            fields = {
                "description": state.groups[gid].description,
                "people": "\n".join(
                    f"- {agents[i].name}: {agents[i].profile.describe(self.cfg.scenario_profile_chars)} Goal: {agents[i].goal}"
                    for i in participants
                ),
                "log": log_text,
            }
            chats.append(render_prompt(self.scenario_prompt, "scenario.prompt", **fields))
            metas.append((gid, buf, participants))
        outs = self.roles.get("summarizer").generate(chats)
        scenarios = []
        for (gid, buf, participants), c in zip(metas, outs, strict=True):
            sid = f"s{state.n_scenarios + len(scenarios):05d}-g{gid:03d}"
            summary = agent_ops.whole_sentences(" ".join(c.text.split())) or " ".join(
                x for s in buf for x in s["lines"]
            )
            scenarios.append(
                Scenario(
                    id=sid,
                    group=gid,
                    rounds=tuple(s["round"] for s in buf),
                    participants=tuple(participants),
                    participant_names=tuple(agents[i].name for i in participants),
                    events=tuple(e for s in buf for e in s["events"]),
                    actions=tuple(x for s in buf for x in s["lines"]),
                    summary=summary,
                )
            )
            state.buffers[gid] = []
            group = state.groups[gid]
            group.memory = (group.memory + [summary])[-self.cfg.group_memory :]
        return scenarios

    def stop_reason(self, state: SimState) -> str | None:
        if all(a.done for a in state.agents):
            return "goals_reached"
        if self.cfg.target_scenarios and state.n_scenarios >= self.cfg.target_scenarios:
            return "target_scenarios"
        if state.round >= self.cfg.max_rounds:
            return "max_rounds"
        return None

    def run(self, state: SimState) -> SimState:
        """Lock-step rounds until a stop reason; returns the state (the same object).
        `schedule: groups` runs matrix.sim.scheduler.GroupScheduler over this engine
        instead (matrix.sim.run picks), which imports this module, never the reverse."""
        while not state.stopped:
            self.step(state)
        return state


def round_spend(before: dict, after: dict) -> dict:
    """A round's LLM spend from the ledger totals before it and the ledger after it
    (requests: rows the round asked for; calls: rows paid for, the cache misses)."""
    return {
        "llm_requests": after["total"]["requests"] - before["requests"],
        "llm_calls": after["total"]["calls"] - before["calls"],
        "prompt_tokens": after["total"]["prompt_tokens"] - before["prompt_tokens"],
        "completion_tokens": after["total"]["completion_tokens"] - before["completion_tokens"],
        "max_batch": max((u["max_batch"] for u in after["roles"].values()), default=0),
    }
