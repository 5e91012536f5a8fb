"""report.md of a simulation: group sizes, per-round LLM load, per-group timelines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from matrix.common.io import atomic_write_text


def write_report(
    out_dir: Path, state, scenarios: list[dict], events: list[dict], rounds: list[dict]
) -> Path:
    agents, groups = state.agents, state.groups
    lines = [f"# Simulation report: {out_dir}", ""]
    lines += [
        f"- agents: {len(agents)} ({sum(a.done for a in agents)} reached their goal)",
        f"- groups: {len(groups)}",
        f"- rounds: {state.round} (stopped: {state.stopped})",
        f"- events: {len(events)}",
        f"- scenarios: {len(scenarios)}",
        "",
    ]
    routing = Counter(e["routing"] for e in events)
    lines += ["## Routing decisions", "", "| how | events |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(routing.items())] + [""]
    sizes = Counter(len(g.members) for g in groups)
    width = max(sizes.values(), default=1)
    lines += ["## Group sizes", "", "| size | groups | |", "|---|---|---|"]
    lines += [
        f"| {s} | {n} | {'#' * max(1, round(30 * n / width))} |" for s, n in sorted(sizes.items())
    ] + [""]
    if rounds:
        lines += [
            "## LLM load per round",
            "",
            "| round | active agents | events | observations | fallbacks | LLM calls | prompt tokens | completion tokens | max batch |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rounds:
            lines.append(
                "| {round} | {active_agents} | {events} | {observations} | {routing_fallbacks} | "
                "{llm_calls} | {prompt_tokens} | {completion_tokens} | {max_batch} |".format(**r)
            )
        lines.append("")
        lines += routing_table(rounds)
    lines += ["## Groups", ""]
    by_group: dict[int, list[dict]] = {}
    for e in events:
        by_group.setdefault(e["group"], []).append(e)
    scen_by_group: dict[int, list[dict]] = {}
    for s in scenarios:
        scen_by_group.setdefault(s["group"], []).append(s)
    for g in groups:
        names = ", ".join(agents[i].name for i in g.members)
        lines += [f"### Group {g.id}: {names}", "", f"_{g.description}_", ""]
        for e in by_group.get(g.id, [])[:30]:
            seen = ", ".join(agents[o].name for o in e["observers"]) or "nobody"
            lines.append(
                f"- round {e['round']}, **{e['agent_name']}**: {e['action']} _(seen by {seen}; {e['routing']})_"
            )
        for s in scen_by_group.get(g.id, []):
            lines += [
                "",
                f"> **Scenario {s['id']}** (rounds {', '.join(map(str, s['rounds']))}): {s['summary']}",
            ]
        lines.append("")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


ROUTING_COLUMNS = (
    "asked",
    "made",
    "parsed",
    "retried",
    "truncated",
    "unparseable",
    "missing",
    "structured",
)


def routing_table(rounds: list[dict]) -> list[str]:
    """Per round, the items modulators were asked to route and what became of them (the
    `routing_*` metrics of matrix.sim.communication.RoutingCounts); nothing for a mode
    without a modulator or for rounds logged before these counts existed."""
    if not any(r.get("routing_asked") for r in rounds):
        return []
    lines = [
        "## Routing per round",
        "",
        "Items (own actions and news from other groups) the modulators were asked to route:"
        " made (the answer has an entry), parsed (a usable route; retried: from the retry),"
        " and the fallbacks (`communication.unparsed`) by why: truncated (an answer that left"
        " the item undecided hit its token budget), unparseable, missing. structured: asked with a JSON schema.",
        "",
        "| round | "
        + " | ".join(ROUTING_COLUMNS[:4])
        + " | fallbacks | "
        + " | ".join(ROUTING_COLUMNS[4:])
        + " |",
        "|---" * (len(ROUTING_COLUMNS) + 2) + "|",
    ]
    for r in rounds:
        n = {c: int(r.get(f"routing_{c}", 0)) for c in ROUTING_COLUMNS}
        fallbacks = n["truncated"] + n["unparseable"] + n["missing"]
        cells = [n[c] for c in ROUTING_COLUMNS[:4]] + [fallbacks]
        cells += [n[c] for c in ROUTING_COLUMNS[4:]]
        lines.append(f"| {r['round']} | " + " | ".join(map(str, cells)) + " |")
    return lines + [""]
