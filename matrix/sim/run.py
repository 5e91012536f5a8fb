"""The simulate stage: profiles -> agents -> groups -> rounds -> scenarios."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from matrix.common.io import JsonlLog, read_json, resolve_data_path, write_json, write_jsonl
from matrix.common.progress import progress
from matrix.common.validation import ConfigProblems
from matrix.core.config_check import check_stage
from matrix.core.shard import Shard
from matrix.core.stage import StageRun, open_stage
from matrix.llm.embeddings import Encoder
from matrix.llm.prompts import render_prompt
from matrix.llm.roles import Roles
from matrix.sim import agents as agent_ops
from matrix.sim.communication import (
    Communication,
    CommunicationContext,
    Group,
    build_communication,
    communication_class,
    members_text,
)
from matrix.sim.config import SimConfig
from matrix.sim.engine import Simulation
from matrix.sim.explorer import write_sim_explorer
from matrix.sim.grouping import check_bounds, group_population
from matrix.sim.population import LoadReport, load_profiles, sample_profiles
from matrix.sim.profile_fields import field_map_problem, file_columns
from matrix.sim.pseudonyms import anonymize_rules
from matrix.sim.report import write_report
from matrix.sim.scheduler import GroupScheduler
from matrix.sim.schemas import Profile
from matrix.sim.state import SimState

log = logging.getLogger(__name__)

# The paper: K = 200 groups for 1,000 agents, i.e. five agents per group on average.
AGENTS_PER_GROUP = 5


def resolve_k(k, n_agents: int) -> int:
    return max(1, math.ceil(n_agents / AGENTS_PER_GROUP)) if k in (None, "auto") else int(k)


def llm_roles(cfg: DictConfig) -> list[str]:
    """The llm.roles simulate calls: every agent and the summarizer, and what its
    communication mode calls (matrix.core.registry's roles_ref)."""
    try:
        mode = communication_class(cfg.communication.get("_target_"))
    except ValueError:  # reported by validate
        return ["agent", "summarizer"]
    return ["agent", "summarizer", *mode.llm_roles]


def validate(cfg: DictConfig) -> ConfigProblems:
    """What needs more than the typed values (matrix.sim.settings, checked first): the
    profile file, groups that fit the population, the roles; all problems listed at once."""
    p = ConfigProblems()
    comm, sim, pop = cfg.communication, cfg.simulation, cfg.population
    mode = _check_communication(p, comm)
    k = comm.k
    if k not in (None, "auto"):
        p.check(
            isinstance(k, int) and k >= 1,
            "communication.k",
            f"{k!r} must be an integer >= 1 or 'auto'",
        )
    p.check(
        not (sim.schedule == "groups" and mode is not None and mode.crosses_groups),
        "simulation.schedule",
        f"groups cannot run communication._target_={comm.get('_target_')} (it routes across "
        "groups); use lockstep",
    )
    p.check(int(comm.profile_chars) >= 1, "communication.profile_chars", "must be >= 1")
    _check_population(p, pop)
    if not p and pop.size is not None and isinstance(k, int):
        try:
            check_bounds(int(pop.size), k, int(comm.size_min), int(comm.size_max))
        except ValueError as e:
            p.add("communication", str(e))
    for role in llm_roles(cfg):
        p.check(
            role in cfg.llm.roles,
            f"llm.roles.{role}",
            "missing; every simulate role needs a backend",
        )
    return p


def _check_communication(p: ConfigProblems, comm: DictConfig) -> type[Communication] | None:
    """communication._target_ (the mode's class) and the mode's own options; the class, or
    None when it cannot be imported."""
    target = comm.get("_target_")
    if not target:
        p.add(
            "communication._target_",
            "missing; name the mode's class (matrix.sim.modulator.StructuredCommunication) "
            "or pick a shipped mode with communication=structured|random|none",
        )
        return None
    try:
        mode = communication_class(target)
    except ValueError as e:
        p.add("communication._target_", str(e))
        return None
    mode.check_config(OmegaConf.to_container(comm, resolve=True), p)
    return mode


def _check_population(p: ConfigProblems, pop: DictConfig) -> None:
    """population.path and its columns against population.fields (the values are typed:
    matrix.sim.settings)."""
    path = resolve_data_path(str(pop.path))
    p.check(
        path.is_file(),
        "population.path",
        f"no file at {path}; use population=default or a JSONL/CSV file",
    )
    if path.is_file():
        columns = file_columns(path, str(pop.format), pop.get("max_line_bytes"))
        problem = field_map_problem(path, columns, dict(pop.fields))
        if problem is not None and problem[1]:
            p.add("population.fields", problem[0])


def _population(cfg: DictConfig, roles: Roles) -> tuple[list[Profile], LoadReport]:
    """The profiles the agents are made from (loaded, sampled, anonymized) and the load report."""
    pop = cfg.population
    profiles, report = load_profiles(
        str(pop.path),
        dict(pop.fields),
        pop.format,
        pop.on_error,
        int(pop.max_chars),
        pop.min_age,
        pop.get("max_line_bytes"),
    )
    profiles = sample_profiles(profiles, pop.size, int(pop.sample_seed))
    if pop.anonymize in ("rules", "llm"):
        profiles = anonymize_rules(profiles, int(cfg.seed))
    if pop.anonymize == "llm":
        profiles = agent_ops.anonymize_llm(roles.get("summarizer"), cfg.agent.prompts, profiles)
    return profiles, report


def _describe_groups(cfg: DictConfig, roles: Roles, groups: list[Group], agents: list) -> None:
    """Each modulator holds a description of its group, used for inter-group routing."""
    comm = cfg.communication
    chats = [
        render_prompt(
            comm.prompts.group_description,
            "communication.prompts.group_description",
            members=members_text(g, agents, int(comm.profile_chars)),
        )
        for g in groups
    ]
    for g, c in zip(groups, roles.get("summarizer").generate(chats), strict=True):
        g.description = " ".join(c.text.split())[:300] or ", ".join(
            agents[i].name for i in g.members
        )


def setup(cfg: DictConfig, roles: Roles, encoder: Encoder) -> tuple[SimState, np.ndarray, dict]:
    pop = cfg.population
    profiles, report = _population(cfg, roles)
    comm = cfg.communication
    k = resolve_k(comm.k, len(profiles))
    vectors = encoder.encode([p.describe() for p in profiles])
    labels = group_population(
        vectors,
        k,
        int(comm.size_min),
        int(comm.size_max),
        int(cfg.seed),
        int(comm.get("exact_grouping_max", 2000)),
    )
    groups = [Group(id=g, members=[]) for g in range(k)]
    for i, g in enumerate(labels):  # members in index order, as before
        groups[g].members.append(i)
    agents = agent_ops.create_agents(roles.get("agent"), cfg.agent.prompts, profiles, labels)
    shard = Shard.from_cfg(cfg)
    for a in agents:  # another shard simulates these; done with no done_round marks them
        a.done = a.done or not shard.owns(a.group)
    _describe_groups(cfg, roles, groups, agents)
    group_vectors = np.stack([vectors[g.members].mean(0) for g in groups])
    group_vectors /= np.linalg.norm(group_vectors, axis=1, keepdims=True) + 1e-9
    log.info(
        "population: %d profiles from %s (%d skipped, %d under population.min_age), %d groups",
        len(profiles),
        report.path,
        len(report.skipped),
        report.under_age,
        k,
    )
    load_report = {
        "path": report.path,
        "lines": report.lines,
        "loaded": report.loaded,
        "skipped": list(report.skipped),
        "under_age": report.under_age,
        "min_age": pop.min_age,
    }
    return SimState(round=0, agents=agents, groups=groups), group_vectors, load_report


def run_simulate(cfg: DictConfig, roles: Roles | None = None) -> dict:
    """Run (or resume) the simulate stage; `roles` lets callers inject LLMs (benchmarks)."""
    check_stage(cfg, "simulate", provided_backends=roles.provided if roles else ())
    run = open_stage(cfg, "simulate")
    roles = roles or Roles(cfg.llm)
    run.track_llm_spend(roles)
    sim_cfg = SimConfig.from_cfg(cfg)
    per_round: list[dict] = []

    def on_round(r: int, stats: dict) -> None:
        per_round.append(stats)
        if stats.get("routing_fallbacks"):  # one line a round, not one per item (DEBUG)
            log.info(
                "round %d: the modulator gave no usable routing for %d items "
                "(%d truncated, %d unparseable, %d missing; communication.unparsed=%s)",
                r,
                stats["routing_fallbacks"],
                stats.get("routing_truncated", 0),
                stats.get("routing_unparseable", 0),
                stats.get("routing_missing", 0),
                cfg.communication.get("unparsed", "broadcast"),
            )
        run.log({f"sim/{k}": v for k, v in stats.items()}, step=r)
        bar.update(task, completed=r, info=f"{stats['scenarios_total']} scenarios")

    sim = Simulation(
        run.dir, sim_cfg, roles, None, cfg.agent.prompts, cfg.scenario.prompt, on_round
    )
    if Shard.from_cfg(cfg).active:
        sim.owns_group = Shard.from_cfg(cfg).owns
    state = restore_or_set_up(cfg, sim, roles, run.dir)
    with progress("simulate") as bar:
        task = bar.add_task("rounds", total=sim_cfg.max_rounds, completed=state.round)
        groups = sim_cfg.schedule == "groups"  # else lock-step
        runner = GroupScheduler(sim, state) if groups else None
        # lock-step reports five phases a round (matrix.sim.engine Simulation.step)
        left = runner.phase_steps if runner else 5 * (sim_cfg.max_rounds - state.round)
        phases = bar.add_task("phases", total=left)
        sim.on_phase = lambda r, phase: bar.update(phases, advance=1, info=f"round {r}: {phase}")
        state = runner.run() if runner else sim.run(state)
    return finish_simulation(cfg, run, sim, state, roles, per_round)


def restore_or_set_up(cfg: DictConfig, sim: Simulation, roles: Roles, out: Path) -> SimState:
    """The state a killed run left (resume), or a new population and grouping; then the
    communication schema over the groups' vectors."""
    state = sim.load_state()
    if state is None:
        encoder = Encoder(cfg.embedding.model, cache_dir=cfg.paths.cache_dir)
        state, group_vectors, load_report = setup(cfg, roles, encoder)
        write_json(out / "profiles_report.json", load_report)
        write_json(out / "group_vectors.json", group_vectors.round(6).tolist())
        sim.save_state(state)
    else:
        group_vectors = np.asarray(read_json(out / "group_vectors.json"))
    sim.comm = build_communication(
        CommunicationContext(
            config=OmegaConf.to_container(cfg.communication, resolve=True),
            roles=roles,
            agents=state.agents,
            groups=state.groups,
            group_vectors=group_vectors,
            seed=int(cfg.seed),
        )
    )
    return state


def finish_simulation(
    cfg: DictConfig, run: StageRun, sim: Simulation, state: SimState, roles: Roles, per_round
) -> dict:
    """agents.jsonl, groups.json, report.md and the manifest of a finished simulation."""
    write_jsonl(run.dir / "agents.jsonl", (a.to_row() for a in state.agents))
    write_json(
        run.dir / "groups.json",
        {
            "k": len(state.groups),
            "mode": sim.comm.mode,
            "groups": [
                {"id": g.id, "members": g.members, "description": g.description}
                for g in state.groups
            ],
        },
    )
    scenarios = sim.scenarios.read()
    events = sim.events.read()
    rounds = _read_rounds(run.dir, per_round)
    write_report(run.dir, state, scenarios, events, rounds)
    write_sim_explorer(run.dir, state, sim.comm.mode, scenarios, events, rounds)
    counts = {
        "agents": len(state.agents),
        "groups": len(state.groups),
        "rounds": state.round,
        "events": len(events),
        "scenarios": len(scenarios),
        "agents_done": sum(a.done for a in state.agents),
        "routing_fallbacks": sum(1 for e in events if e["routing"] == "fallback"),
        "profiles_under_age": read_json(run.dir / "profiles_report.json").get("under_age", 0),
    }
    run.finish(
        counts,
        inputs={"population": resolve_data_path(str(cfg.population.path))},
        extra={
            "stopped": state.stopped,
            "llm": roles.ledger(),
            "models": {
                r: roles.get(r).name
                for r in ("agent", "modulator", "summarizer")
                if r in cfg.llm.roles
            },
        },
    )
    return counts


def _read_rounds(out_dir, fresh: list[dict]) -> list[dict]:
    """Per-round stats from metrics.jsonl (survives resumes), falling back to this process's."""
    rows = [r for r in JsonlLog(out_dir / "metrics.jsonl").read() if "sim/round" in r]
    by_round = {
        int(r["sim/round"]): {k[4:]: v for k, v in r.items() if k.startswith("sim/")} for r in rows
    }
    return [by_round[k] for k in sorted(by_round)] or fresh
