"""What each phase of a round reads and writes, and the order of phases that follows from it.

One declaration serves the `groups` scheduler (matrix/sim/scheduler.py), which runs a
group's phases as soon as what they read is ready, and the replay model of
bench/simulate.py, which replays recorded requests on the same dependencies.

A group's phases in lock-step order (`PHASES`), with the group's state they touch:

- act: every active member acts. Reads inbox, memory, plan, done; writes actions, inbox
  (emptied), memory (what it noticed and did).
- route: the modulator routes the actions and the news other groups sent (round r-1's
  `share` of every group: the one cross-group read). Reads actions, group_memory; writes
  routing, inbox (the observations, for the next round's action).
- share: the modulator picks the other groups that hear of the actions. Reads actions,
  group_memory; writes forwarded (and publishes the news).
- summary: the round's raw step joins the buffer; a full buffer becomes a scenario, which
  joins the group's memory. Reads routing, forwarded, buffer, group_memory; writes buffer,
  group_memory.
- memory, plan, goal_check: fold long memories, revise plans, check goals. Each reads what
  its prompt template uses (`{memory}`, `{observations}`, `{plan}`...), plus memory (fold),
  done and plan (plan revision: active members, current plan), done (goal check); writes
  memory, plan, done.

Profiles, goals, personalities, names and group descriptions never change during a run
and are not tracked. From these sets, a step (round, phase) of a group waits for
- the last earlier step that writes what it reads or writes to be done (its inputs are
  final; writes land in lock-step order), and
- every earlier step that reads what it writes, since that resource's last write, to
  have started (they took their inputs before it changes them).
So a step sees exactly the state the lock-step engine would show it, which is why the rows
are the same. Plan revisions and goal checks run only in their rounds; a step that does not
run reads and writes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from matrix.llm.prompts import template_fields

PHASES = ("act", "route", "share", "summary", "memory", "plan", "goal_check")

# The phase whose steps of round r-1, in every group, a step of round r waits for: the news
# a modulator routes is what every modulator decided to forward in the round before.
CROSS_GROUP = {"route": "share"}

# Agent prompt fields that carry state a phase changes (matrix/sim/agents.py agent_fields);
# every other field (name, profile, goal, personality, round...) is fixed during a run.
FIELD_RESOURCE = {
    "memory": "memory",
    "old_memories": "memory",
    "summary": "memory",
    "observations": "inbox",
    "plan": "plan",
}
# The agent prompt each phase renders (conf/agent/*.yaml prompts.<key>).
PHASE_PROMPT = {"memory": "memory_summary", "plan": "revise_plan", "goal_check": "goal_check"}


@dataclass(frozen=True)
class PhaseSpec:
    reads: frozenset[str]
    writes: frozenset[str]


Step = tuple[int, str]  # (round, phase)


def step_priority(step: Step) -> int:
    """The order in which waiting requests of the `groups` schedule get a server slot
    (matrix.llm.slots; lower first): earlier rounds first, then lock-step phase order, so
    the steps the rest of a round waits for are not stuck behind ones that can wait."""
    r, phase = step
    return r * len(PHASES) + PHASES.index(phase)


@dataclass(frozen=True)
class Deps:
    """What a step of one group waits for, in the same group (plus `CROSS_GROUP`)."""

    done: tuple[Step, ...]  # these steps' results are applied
    started: tuple[Step, ...]  # these steps have taken their inputs


def prompt_reads(template: Mapping | None) -> frozenset[str]:
    """The tracked resources a {system, user} template reads."""
    if not template:
        return frozenset()
    fields = set()
    for role in ("system", "user"):
        if template.get(role):
            fields |= template_fields(template[role])
    return frozenset(FIELD_RESOURCE[f] for f in fields if f in FIELD_RESOURCE)


def phase_specs(agent_prompts: Mapping) -> dict[str, PhaseSpec]:
    """Each phase's reads and writes, with the agent prompts of this run."""

    def spec(reads: Iterable[str], writes: Iterable[str], phase: str | None = None):
        extra = prompt_reads(agent_prompts.get(PHASE_PROMPT[phase])) if phase else frozenset()
        return PhaseSpec(frozenset(reads) | extra, frozenset(writes))

    return {
        "act": spec({"inbox", "memory", "plan", "done"}, {"actions", "inbox", "memory"}),
        "route": spec({"actions", "group_memory"}, {"routing", "inbox"}),
        "share": spec({"actions", "group_memory"}, {"forwarded"}),
        # the summary appends to the group's memory: it reads what it changes
        "summary": spec(
            {"routing", "forwarded", "buffer", "group_memory"}, {"buffer", "group_memory"}
        ),
        "memory": spec({"memory"}, {"memory"}, "memory"),
        "plan": spec({"done", "plan"}, {"plan"}, "plan"),
        "goal_check": spec({"done"}, {"done"}, "goal_check"),
    }


def runs(phase: str, r: int, revise_plan_every: int, goal_check_every: int) -> bool:
    """Whether a phase has a step in round r (plans and goal checks run on their cadence)."""
    if phase == "plan":
        return bool(revise_plan_every) and r % revise_plan_every == 0
    if phase == "goal_check":
        return bool(goal_check_every) and r % goal_check_every == 0
    return True


def dependencies(
    specs: Mapping[str, PhaseSpec],
    rounds: Iterable[int],
    revise_plan_every: int,
    goal_check_every: int,
) -> dict[Step, Deps]:
    """Each step of a group's rounds (in lock-step order) -> what it waits for."""
    last_writer: dict[str, Step] = {}
    readers: dict[str, list[Step]] = defaultdict(list)
    out: dict[Step, Deps] = {}
    for r in rounds:
        for phase in PHASES:
            if not runs(phase, r, revise_plan_every, goal_check_every):
                continue
            step, spec = (r, phase), specs[phase]
            done = {last_writer[x] for x in spec.reads | spec.writes if x in last_writer}
            started = {s for x in spec.writes for s in readers[x]} - done
            out[step] = Deps(tuple(sorted(done, key=_order)), tuple(sorted(started, key=_order)))
            for x in spec.reads:
                readers[x].append(step)
            for x in spec.writes:
                last_writer[x] = step
                readers[x] = []
    return out


def _order(step: Step) -> tuple[int, int]:
    return step[0], PHASES.index(step[1])
