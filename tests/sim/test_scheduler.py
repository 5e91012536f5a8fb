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
from matrix.core.validation import ConfigError
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles
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
