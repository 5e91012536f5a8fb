"""simulate/explorer.html: the simulation as a page to browse (matrix.common.explorer):
agents, groups, rounds, events with their routing, and scenarios, linked both ways
(an event to its agent, group and observers; a scenario to its participants and events)."""

from __future__ import annotations

from pathlib import Path

from matrix.common.explorer import EXPLORER_FILE, Section, write_explorer
from matrix.sim.schemas import Agent
from matrix.sim.state import SimState


def write_sim_explorer(
    out_dir: Path,
    state: SimState,
    mode: str,
    scenarios: list[dict],
    events: list[dict],
    rounds: list[dict],
) -> Path:
    """Write `out_dir`/explorer.html from a finished (or stopped) simulation."""
    ids = [a.profile.id for a in state.agents]  # generated rows name agents by profile id
    sections = _sections(
        [_agent_row(a) for a in state.agents],
        [
            {
                "id": g.id,
                "size": len(g.members),
                "members": [ids[i] for i in g.members],
                "description": g.description,
            }
            for g in state.groups
        ],
        [_event_row(e, ids) for e in events],
        [_scenario_row(s, ids) for s in scenarios],
        rounds,
    )
    subtitle = (
        f"{len(state.agents)} agents in {len(state.groups)} groups ({mode} communication), "
        f"{state.round} rounds, {len(events)} events, {len(scenarios)} scenarios"
        + (f"; stopped: {state.stopped}" if state.stopped else "")
    )
    return write_explorer(out_dir / EXPLORER_FILE, "Simulation explorer", sections, subtitle)


def _agent_row(a: Agent) -> dict:
    return {
        "id": a.profile.id,
        "index": a.index,
        "name": a.name,
        "group": a.group,
        "goal": a.goal,
        "personality": a.personality,
        "plan": a.plan,
        "done": a.done,
        "done_round": a.done_round,
        "bio": a.profile.bio,
        "persona": a.profile.persona,
        "topics": list(a.profile.topics),
        "memory_summary": a.memory_summary,
    }


def _event_row(e: dict, ids: list[str]) -> dict:
    return {
        **{k: e[k] for k in ("id", "round", "group", "agent_name", "routing")},
        "agent": ids[e["agent"]],
        "action": e["action"],
        "observers": [ids[o] for o in e["observers"]],
        "routing_reason": e.get("routing_reason", ""),
    }


def _scenario_row(s: dict, ids: list[str]) -> dict:
    return {
        **{k: s[k] for k in ("id", "group", "rounds", "participant_names", "summary")},
        "participants": [ids[i] for i in s["participants"]],
        "events": list(s["events"]),
        "actions": list(s["actions"]),
    }


def _sections(agents, groups, events, scenarios, rounds) -> list[Section]:
    return [
        Section(
            "scenarios",
            "Scenarios",
            "id",
            ["id", "group", "rounds", "participant_names", "summary"],
            scenarios,
            filters=["group", "rounds"],
            links={"group": "groups", "participants": "agents", "events": "events"},
            description="What MATRIX-Gen writes rows from: a group's steps, summarized.",
        ),
        Section(
            "events",
            "Events",
            "id",
            ["id", "round", "group", "agent", "agent_name", "routing", "observers", "action"],
            events,
            filters=["round", "group", "routing"],
            links={"group": "groups", "agent": "agents", "observers": "agents"},
            description="Every action, and who the modulator routed it to (routing, observers).",
        ),
        Section(
            "agents",
            "Agents",
            "id",
            ["id", "name", "group", "done", "goal"],
            agents,
            filters=["group", "done"],
            links={"group": "groups"},
        ),
        Section(
            "groups",
            "Groups",
            "id",
            ["id", "size", "members", "description"],
            groups,
            links={"members": "agents"},
        ),
        Section("rounds", "Rounds", "round", list(rounds[0]) if rounds else ["round"], rounds),
    ]
