"""generate/explorer.html: the generated rows as a page to browse (matrix.common.explorer),
each with its lineage: the scenarios and agents it was written from. Those records are
embedded (the page stands alone) and linked into the simulate explorer by relative path
(`../simulate/explorer.html#scenarios/<id>`), where their events and groups are."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matrix.common.explorer import EXPLORER_FILE, Section, write_explorer
from matrix.gen.candidates import row_instruction, row_responses
from matrix.gen.inputs import SimulationData


def write_gen_explorer(
    out_dir: Path, by_set: dict[str, list[dict]], sim: SimulationData | None
) -> Path:
    """Write `out_dir`/explorer.html from the accepted rows of each set."""
    rows = [_row(r) for set_rows in by_set.values() for r in set_rows]
    scenario_ids = {s for r in rows for s in r["scenario_ids"]}
    agent_ids = {a for r in rows for a in r["agent_ids"]}
    scenarios, agents, external = [], [], {}
    if sim is not None:
        scenarios = [_scenario(s, sim) for s in sim.scenarios if s["id"] in scenario_ids]
        agents = [_agent(a) for a in sim.agents.values() if a["profile"]["id"] in agent_ids]
        target = sim.dir / EXPLORER_FILE
        if target.exists():
            rel = Path(os.path.relpath(target, out_dir)).as_posix()
            external = {"scenarios": rel, "agents": rel}
    sections = [
        Section(
            "rows",
            "Rows",
            "id",
            ["id", "set", "kind", "instruction", "scenario_ids", "agent_ids"],
            rows,
            filters=["set", "domain", "kind", "template"],
            links={"scenario_ids": "scenarios", "agent_ids": "agents"},
            description="Each generated row with its lineage (↗: in the simulate explorer).",
        ),
        Section(
            "scenarios",
            "Scenarios",
            "id",
            ["id", "group", "participant_names", "summary"],
            scenarios,
            filters=["group"],
            links={"participants": "agents"},
            description="The scenarios the rows above were written from.",
        ),
        Section("agents", "Agents", "id", ["id", "name", "group", "goal"], agents),
    ]
    counts = ", ".join(f"{name}: {len(r)}" for name, r in by_set.items())
    subtitle = f"{len(rows)} rows ({counts})" + (f" from {sim.dir}" if sim else "")
    return write_explorer(
        out_dir / EXPLORER_FILE, "Generated data explorer", sections, subtitle, external
    )


def _row(r: dict[str, Any]) -> dict[str, Any]:
    lineage = r.get("lineage") or {}
    rejected = r.get("rejected")
    return {
        "id": r["id"],
        "set": r.get("set"),
        "domain": r.get("domain"),
        "kind": "sft" if "messages" in r else "dpo",
        "instruction": row_instruction(r),
        "answer": "\n\n".join(_text(x) for x in row_responses(r)),
        **({"rejected": _text(rejected)} if rejected is not None else {}),
        "scenario_ids": list(lineage.get("scenario_ids") or []),
        "agent_ids": list(lineage.get("agent_ids") or []),
        "agent_names": list(lineage.get("agent_names") or []),
        "generator": lineage.get("generator"),
        "template": lineage.get("template"),
        "models": lineage.get("models"),
        "messages": r.get("messages") or r.get("prompt"),
    }


def _text(x: Any) -> str:
    """An answer as text: a string, or the content of a list of messages."""
    if isinstance(x, list):
        return "\n\n".join(str(m.get("content", "")) for m in x if isinstance(m, dict))
    return str(x)


def _scenario(s: dict, sim: SimulationData) -> dict:
    ids = {i: a["profile"]["id"] for i, a in sim.agents.items()}
    return {
        **{k: s.get(k) for k in ("id", "group", "rounds", "participant_names", "summary")},
        "participants": [ids.get(int(i), str(i)) for i in s.get("participants", [])],
    }


def _agent(a: dict) -> dict:
    p = a["profile"]
    return {
        "id": p["id"],
        "name": p["name"],
        "group": a.get("group"),
        "goal": a.get("goal", ""),
        "persona": p.get("persona", ""),
    }
