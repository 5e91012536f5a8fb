"""`simulation.schedule: groups`: each group runs its own rounds on its own thread.

With a backend whose answer depends only on the request (as a server's does), the rows
must equal the lock-step engine's, a crash must resume to the same rows, and calls of
different groups must actually be in flight together."""

import hashlib
import json
import re
import threading
import time

import pytest

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigError
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles
from matrix.llm.slots import current_priority
from matrix.sim.phases import PHASES
from matrix.sim.run import run_simulate
from tests.conftest import compose

_ITEM = re.compile(r"^([A-Z]{1,2})\. ", re.MULTILINE)
_CANDIDATE = re.compile(r"^(\d+): ", re.MULTILINE)


class PureWorld:
    """Answers are a function of the request alone (kind, text, seed), like a seeded server."""

    name = "pure-world"
    concurrent_calls = True

    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None):
        self.delay_s, self.fail_at = delay_s, fail_at
        self.lock = threading.Lock()
        self.calls = self.in_flight = self.max_in_flight = 0

    def answer(self, chat, seed) -> str:
        user = chat[-1]["content"] if chat[-1]["role"] == "user" else ""
        first_user = next(m["content"] for m in chat if m["role"] == "user")
        h = int(hashlib.sha256(json.dumps([chat, seed]).encode()).hexdigest(), 16)
        if "notice" in first_user and _ITEM.search(first_user):
            members = len(re.findall(r"^\d+: .* - goal:", first_user, re.MULTILINE))
            return "\n".join(
                f"{x}: [{(h >> k) % members}, {(h >> (k + 7)) % members}], reason {k}"
                for k, x in enumerate(_ITEM.findall(first_user))
            )
        if "Which other communities would care" in user:
            cands = _CANDIDATE.findall(user.split("Other communities:")[1])
            return f"[{cands[h % len(cands)]}]" if h % 3 else "[]"
        if "Answer yes or no" in user:
            return "Yes." if h % 7 == 0 else "No."
        return f"Text {h % 10**8} about the plan. It goes on."

    def generate(self, chats, sampling):
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            calls = self.calls
        try:
            if self.fail_at is not None and calls >= self.fail_at:
                raise RuntimeError("the server went away")
            time.sleep(self.delay_s)
            return [
                Completion(self.answer(c, sampling.seed), 10, 5, "stop", self.name) for c in chats
            ]
        finally:
            with self.lock:
                self.in_flight -= 1


def _cfg(tmp_path, name, *extra):
    return compose(
        "simulate",
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            "logger=none",
            f"run.name={name}",
            "population.size=12",
            "communication.k=3",
            "simulation.max_rounds=5",
            *extra,
        ],
    )


def _run(tmp_path, name, world, *extra):
    cfg = _cfg(tmp_path, name, *extra)
    return run_simulate(cfg, roles=Roles(cfg.llm, backends={"smollm2": world}, cache=False))


def _rows(tmp_path, name):
    out = tmp_path / name / "simulate"
    state = json.loads((out / "state.json").read_text())
    return {
        "events": read_jsonl(out / "events.jsonl"),
        "scenarios": read_jsonl(out / "scenarios.jsonl"),
        "agents": read_jsonl(out / "agents.jsonl"),
        "state": state,
    }


@pytest.mark.parametrize("extra", [[], ["simulation.target_scenarios=4"]])
def test_groups_schedule_gives_the_lockstep_rows(tmp_path, extra):
    lock = _run(tmp_path, "lock", PureWorld(), *extra)
    world = PureWorld(delay_s=0.02)
    free = _run(tmp_path, "free", world, "simulation.schedule=groups", *extra)
    assert lock == free
    a, b = _rows(tmp_path, "lock"), _rows(tmp_path, "free")
    assert a["events"] and a["scenarios"]
    assert any(e["routing"] == "modulator" and e["observers"] for e in a["events"])
    assert any("News from another community" in x for s in a["scenarios"] for x in s["actions"])
    assert a == b
    assert world.max_in_flight > 1  # calls of different groups were in flight together


def test_groups_schedule_resumes_a_crashed_run_to_the_same_rows(tmp_path):
    _run(tmp_path, "whole", PureWorld(), "simulation.schedule=groups")
    with pytest.raises(RuntimeError, match="server went away"):
        _run(tmp_path, "crash", PureWorld(fail_at=60), "simulation.schedule=groups")
    crashed = json.loads((tmp_path / "crash/simulate/state.json").read_text())
    assert 1 <= crashed["round"] < 5  # it stopped part-way, after a committed round
    _run(tmp_path, "crash", PureWorld(), "simulation.schedule=groups")
    assert _rows(tmp_path, "crash") == _rows(tmp_path, "whole")


def test_groups_schedule_refuses_random_communication(tmp_path):
    with pytest.raises(ConfigError, match="simulation.schedule"):
        _run(tmp_path, "r", PureWorld(), "simulation.schedule=groups", "communication=random")


class TimedWorld(PureWorld):
    """A PureWorld that records each call: what it asks (kind, first lines) and when."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log: list[tuple[str, str, float, float]] = []  # kind, user text, start, end

    def generate(self, chats, sampling):
        t0 = time.perf_counter()
        out = super().generate(chats, sampling)
        user = next(m["content"] for m in chats[0] if m["role"] == "user")
        with self.lock:
            self.log.append((_kind(user), user, t0, time.perf_counter()))
        return out


def _kind(user: str) -> str:
    if "Which other communities would care" in user:
        return "share"
    if _ITEM.search(user) and "notice it?" in user:
        return "route"
    if "Rewrite the plan" in user:
        return "plan"
    if "Answer yes or no" in user:
        return "goal_check"
    if user.startswith("Community:"):
        return "summary"
    return "other"


def _group_of(tmp_path, name, world_log):
    """Each logged call -> its group: by the community description (modulator and summary
    calls) or by the agent the prompt is about (plans, goal checks)."""
    out = tmp_path / name / "simulate"
    groups = json.loads((out / "groups.json").read_text())["groups"]
    by_name = {a["profile"]["name"]: a["group"] for a in read_jsonl(out / "agents.jsonl")}
    calls = []
    for kind, user, t0, t1 in world_log:
        first = user.split("\n", 1)[0].removeprefix("Your community: ").removeprefix("Community: ")
        gid = next((g["id"] for g in groups if first == g["description"]), None)
        if gid is None:
            gid = next((g for n, g in by_name.items() if user.startswith(f"{n}'s goal")), None)
        calls.append((kind, gid, t0, t1))
    return calls


def test_groups_schedule_runs_independent_phases_of_a_group_side_by_side(tmp_path):
    """Sharing runs beside routing, and goal checks and plan revisions (which read neither
    the routing nor the summary with the shipped prompts) beside routing, in one group."""
    lock = _run(tmp_path, "lock", PureWorld())
    world = TimedWorld(delay_s=0.05)
    assert _run(tmp_path, "free", world, "simulation.schedule=groups") == lock
    assert _rows(tmp_path, "free") == _rows(tmp_path, "lock")
    calls = _group_of(tmp_path, "free", world.log)

    def overlap(kind_a: str, kinds_b: set[str]) -> bool:
        return any(
            a[1] == b[1] and a[1] is not None and a[2] < b[3] and b[2] < a[3]
            for a in calls
            if a[0] == kind_a
            for b in calls
            if b[0] in kinds_b
        )

    assert overlap("route", {"share"})
    assert overlap("route", {"plan", "goal_check"})


# Agent prompts that read every changing field (observations, plan, memory): each phase must
# be given, and wait for, what its template reads.
_READ_ALL = {
    "memory_summary": "Earlier summary: {summary}\nMemories of {name}:\n{old_memories}\n"
    "Seen lately: {observations}\nPlan: {plan}\nSummarize these memories in two sentences.",
    "revise_plan": "{name}'s goal: {goal}\nCurrent plan: {plan}\nSeen lately: {observations}\n"
    "What happened so far:\n{memory}\nRewrite the plan as three short numbered steps.",
    "goal_check": "{name}'s goal: {goal}\nPlan: {plan}\nSeen lately: {observations}\n"
    "What happened so far:\n{memory}\nHas {name} fully achieved this goal? Answer yes or no.",
}


class MarkerWorld(PureWorld):
    """Records every request that carries the scheduler's stand-in for state not given."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.not_given: list[str] = []

    def generate(self, chats, sampling):
        from matrix.sim.group_steps import NOT_GIVEN

        for c in chats:
            text = json.dumps(c)
            if NOT_GIVEN in text:
                with self.lock:
                    self.not_given.append(text)
        return super().generate(chats, sampling)


def _run_read_all(tmp_path, name, world, *extra):
    cfg = _cfg(tmp_path, name, "simulation.memory.max_items=3", "simulation.memory.keep=2", *extra)
    for key, user in _READ_ALL.items():
        cfg.agent.prompts[key].user = user
    return run_simulate(cfg, roles=Roles(cfg.llm, backends={"smollm2": world}, cache=False))


def test_groups_schedule_gives_each_phase_what_its_prompt_reads(tmp_path, monkeypatch):
    """With prompts that read every changing field, each phase waits for, and is given,
    the results it reads: the rows equal lock-step's and no request carries the stand-in
    for state a phase was not given. A declaration that leaves out one read (goal checks
    reading the plan) is caught: the stand-in reaches the goal-check prompts."""
    from matrix.sim import group_steps, phases

    lock = _run_read_all(tmp_path, "lock", PureWorld())
    world = MarkerWorld(delay_s=0.01)
    free = _run_read_all(tmp_path, "free", world, "simulation.schedule=groups")
    assert world.not_given == []
    assert free == lock and _rows(tmp_path, "free") == _rows(tmp_path, "lock")
    rows = _rows(tmp_path, "lock")
    assert any(a["memory_summary"] for a in rows["agents"])  # memories were folded

    def without_plan_read(prompts):
        specs = phases.phase_specs(prompts)
        g = specs["goal_check"]
        specs["goal_check"] = phases.PhaseSpec(g.reads - {"plan"}, g.writes)
        return specs

    monkeypatch.setattr(group_steps, "phase_specs", without_plan_read)  # the one declaration
    world = MarkerWorld()
    _run_read_all(tmp_path, "wrong", world, "simulation.schedule=groups")
    assert world.not_given and all("Answer yes or no" in t for t in world.not_given)


def test_phase_dependencies_follow_the_prompts():
    """With the shipped prompts, plans and goal checks wait for the actions and memories,
    not for routing; prompts that read observations make them wait for routing too."""
    from omegaconf import OmegaConf

    from matrix.sim.phases import dependencies, phase_specs

    shipped = OmegaConf.load("conf/agent/default.yaml").prompts
    deps = dependencies(phase_specs(shipped), [1, 2], 2, 2)
    assert (2, "route") not in deps[(2, "goal_check")].done
    assert (2, "route") not in deps[(2, "plan")].done
    assert (2, "memory") in deps[(2, "plan")].done
    assert set(deps[(2, "share")].done) == {(1, "share"), (1, "summary"), (2, "act")}
    assert (1, "summary") not in deps[(2, "act")].done  # next actions beside the summary
    assert (1, "plan") not in deps  # plans revised every 2nd round only
    read_all = {**shipped, **{k: {"user": v} for k, v in _READ_ALL.items()}}
    deps = dependencies(phase_specs(read_all), [1, 2], 2, 2)
    assert {(2, "route"), (2, "plan")} <= set(deps[(2, "goal_check")].done)
    assert (2, "route") in deps[(2, "memory")].done


class PriorityWorld(PureWorld):
    """A PureWorld that records, per call, its kind and the request priority it carries."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen: list[tuple[str, int | None]] = []

    def generate(self, chats, sampling):
        user = next(m["content"] for m in chats[0] if m["role"] == "user")
        with self.lock:
            self.seen.append((_kind(user), current_priority()))
        return super().generate(chats, sampling)


def test_groups_schedule_marks_each_request_with_its_round_and_phase(tmp_path):
    """A server backend hands waiting requests their slots by this mark (matrix.llm.slots)."""
    free = PriorityWorld()
    _run(tmp_path, "free", free, "simulation.schedule=groups")
    first = next(i for i, (_, p) in enumerate(free.seen) if p is not None)
    setup, scheduled = free.seen[:first], free.seen[first:]  # setup: before round 1
    assert setup == [(k, None) for k, _ in setup]
    assert len(scheduled) > len(setup) and all(p is not None for _, p in scheduled)
    for kind, p in scheduled:
        r, phase = divmod(p, len(PHASES))
        assert 1 <= r <= 5
        assert PHASES[phase] == kind if kind != "other" else PHASES[phase] in ("act", "memory")
    assert {p % len(PHASES) for k, p in scheduled if k == "other"} >= {PHASES.index("act")}
    lock = PriorityWorld()
    _run(tmp_path, "lock", lock)
    assert {p for _, p in lock.seen} == {None}  # lock-step sends one phase at a time
