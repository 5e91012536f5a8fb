"""The simulation loop: rounds of actions, routing, scenario formation, checkpoints.

A round: every active agent acts (one batched call), the communication schema decides who
observes each action, observations land in inboxes for the next round, each group's raw
step is buffered and every `scenario.interval` modulator steps the summarizer turns the
buffer into a narrative scenario. Between rounds modulators route events to other groups,
memories are folded, plans revised and goals checked.

Crash safety: events.jsonl and scenarios.jsonl are appended during a round and state.json
is written atomically at the round's end. state.json is the commit point: on resume both
JSONL files are truncated to the row counts it records, so a killed run continues with no
lost and no duplicated rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from matrix.common.io import JsonlLog, read_json, write_json
from matrix.common.prompts import render_prompt
from matrix.llm.roles import RoleLLM, Roles
from matrix.sim import agents as agent_ops
from matrix.sim.communication import Communication, Group
from matrix.sim.schemas import Agent, Event, Scenario

log = logging.getLogger(__name__)


@dataclass
class SimConfig:
    max_rounds: int
    target_scenarios: int | None
    interval: int
    flush_partial: bool
    memory_max_items: int
    memory_keep: int
    revise_plan_every: int
    goal_check_every: int
    inbox_max: int
    seed: int


@dataclass
class SimState:
    round: int = 0
    agents: list[Agent] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    buffers: dict[int, list[dict]] = field(default_factory=dict)  # group -> raw steps
    n_events: int = 0
    n_scenarios: int = 0
    stopped: str | None = None

    def to_json(self) -> dict:
        return {
            "round": self.round,
            "agents": [a.to_row() for a in self.agents],
            "groups": [asdict(g) for g in self.groups],
            "buffers": {str(k): v for k, v in self.buffers.items()},
            "n_events": self.n_events,
            "n_scenarios": self.n_scenarios,
            "stopped": self.stopped,
        }

    @classmethod
    def from_json(cls, d: dict) -> SimState:
        return cls(
            round=d["round"],
            agents=[Agent.from_row(a) for a in d["agents"]],
            groups=[Group(**g) for g in d["groups"]],
            buffers={int(k): v for k, v in d["buffers"].items()},
            n_events=d["n_events"],
            n_scenarios=d["n_scenarios"],
            stopped=d.get("stopped"),
        )


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
        r = state.round + 1
        agents, groups = state.agents, state.groups
        before = self.roles.ledger()["total"]
        active = [a for a in agents if not a.done]
        texts = agent_ops.act(
            self.agent_llm, self.prompts, active, r, seed=self.cfg.seed * 100_003 + r
        )
        actions = {a.index: t for a, t in zip(active, texts, strict=True)}
        decisions = self.comm.route(r, actions, agents, groups)

        # Raw scenario lines per group: who did what, who noticed.
        lines: dict[int, list[str]] = {}
        events: list[Event] = []
        for i in sorted(actions):
            d = decisions[i]
            a = agents[i]
            ev = Event(
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
            events.append(ev)
            seen_by = ", ".join(agents[o].name for o in d.observers) or "nobody"
            # Reported speech, not a transcript: a small summarizer copies "Name: I ..." lines
            # verbatim and slips into the first person; "Name posted: ..." keeps it reporting.
            lines.setdefault(a.group, []).append(
                f'{a.name} posted: "{actions[i]}" (read by {seen_by})'
            )
            for o in d.observers:
                agents[o].inbox.append(f"{a.name}: {actions[i]}")

        # Inter-group routing: another group's members hear of this group's events.
        forwarded = self.comm.inter_group(lines, agents, groups)
        if self.owns_group is not None:  # a shard forwards only to groups it simulates
            forwarded = {
                g: tuple(t for t in ts if self.owns_group(t)) for g, ts in forwarded.items()
            }
        for gid, targets in forwarded.items():
            for t in targets:
                for m in groups[t].members:
                    agents[m].inbox.extend(f"(from another community) {x}" for x in lines[gid][:2])
        for a in agents:
            a.inbox = a.inbox[-self.cfg.inbox_max :]

        # Scenario formation: buffer each group's step; summarize full buffers.
        for gid, ls in lines.items():
            step = {
                "round": r,
                "events": [e.id for e in events if e.group == gid],
                "lines": ls,
                "to_groups": list(forwarded.get(gid, ())),
            }
            state.buffers.setdefault(gid, []).append(step)
            groups[gid].memory = (groups[gid].memory + ls)[-6:]
        ready = [g for g, buf in state.buffers.items() if len(buf) >= self.cfg.interval]
        scenarios = self.summarize(state, ready)

        # Between rounds: memory, plans, goals.
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

        # Commit: rows first, then the state that counts them.
        state.n_events += self.events.append(asdict(e) for e in events)
        state.n_scenarios += self.scenarios.append(asdict(s) for s in scenarios)
        state.round = r
        state.stopped = self.stop_reason(state)
        if state.stopped and self.cfg.flush_partial:
            rest = self.summarize(state, [g for g, buf in state.buffers.items() if buf])
            state.n_scenarios += self.scenarios.append(asdict(s) for s in rest)
        self.save_state(state)
        after = self.roles.ledger()
        stats = {
            "round": r,
            "active_agents": len(active),
            "events": len(events),
            "scenarios_total": state.n_scenarios,
            "routing_fallbacks": sum(1 for e in events if e.routing == "fallback"),
            "observations": sum(len(e.observers) for e in events),
            "agents_done": sum(a.done for a in agents),
            # requests: rows the round asked for; calls: rows paid for (cache misses)
            "llm_requests": after["total"]["requests"] - before["requests"],
            "llm_calls": after["total"]["calls"] - before["calls"],
            "prompt_tokens": after["total"]["prompt_tokens"] - before["prompt_tokens"],
            "completion_tokens": after["total"]["completion_tokens"] - before["completion_tokens"],
            "max_batch": max((u["max_batch"] for u in after["roles"].values()), default=0),
        }
        if self.on_round:
            self.on_round(r, stats)

    def summarize(self, state: SimState, group_ids: list[int]) -> list[Scenario]:
        if not group_ids:
            return []
        agents = state.agents
        chats, metas = [], []
        for gid in sorted(group_ids):
            buf = state.buffers[gid]
            participants = sorted(
                {agents[int(e.split("-a")[1])].index for s in buf for e in s["events"]}
            )
            log_text = "\n".join(f"- {x}" for s in buf for x in s["lines"])
            fields = {
                "description": state.groups[gid].description,
                "people": "\n".join(
                    f"- {agents[i].name}: {agents[i].profile.describe(200)} Goal: {agents[i].goal}"
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
        while not state.stopped:
            self.step(state)
        return state
