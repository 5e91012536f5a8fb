"""A new communication mode is one module named by `communication._target_`: no other edit.

The mode below lives in a module written to a temporary folder on sys.path, which no file of
matrix names; the simulate stage builds it from the config alone and runs with it."""

import json
import textwrap

import pytest

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigError
from matrix.core.cli import command_line_problems
from matrix.llm.roles import Roles
from matrix.sim.run import run_simulate
from tests.conftest import compose
from tests.doubles import PromptHashLLM

TOY_MODE = '''
from matrix.sim.communication import Communication, Decision, Routing


class RingCommunication(Communication):
    """Each action reaches the next member of the actor's group (a ring); no LLM."""

    mode = "ring"

    def __init__(self, context):
        super().__init__(context)
        # what the stage hands every mode: the population, its groups, roles and options
        assert len(context.agents) == sum(len(g.members) for g in context.groups)
        assert context.config["_target_"].endswith("RingCommunication")
        self.hops = 1

    def route(self, round_, actions, agents, groups):
        out = {}
        for i in actions:
            members = next(g.members for g in groups if i in g.members)
            nxt = members[(members.index(i) + self.hops) % len(members)]
            out[i] = Decision(() if nxt == i else (nxt,), "ring")
        return Routing(out)
'''


@pytest.fixture
def ring_mode(tmp_path, monkeypatch) -> str:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_ring_mode.py").write_text(textwrap.dedent(TOY_MODE))
    monkeypatch.syspath_prepend(str(folder))
    return "toy_ring_mode.RingCommunication"


def _run(tmp_path, name, *extra):
    cfg = compose(
        "simulate",
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            "logger=none",
            f"run.name={name}",
            "simulation.max_rounds=3",
            "~llm.roles.modulator",  # the ring calls no modulator, so none is configured
            *extra,
        ],
    )
    roles = Roles(cfg.llm, backends={"smollm2": PromptHashLLM()}, cache=False)
    return run_simulate(cfg, roles=roles)


def _rows(tmp_path, name):
    out = tmp_path / name / "simulate"
    return read_jsonl(out / "events.jsonl"), json.loads((out / "groups.json").read_text())


def test_a_mode_named_only_by_config_runs_under_both_schedules(tmp_path, ring_mode):
    counts = _run(tmp_path, "ring", f"communication._target_={ring_mode}")
    events, groups = _rows(tmp_path, "ring")
    assert counts["events"] == len(events) == 8 * 3
    assert groups["mode"] == "ring"
    members = {a: g["members"] for g in groups["groups"] for a in g["members"]}
    for e in events:
        assert e["routing"] == "ring"
        ring = members[e["agent"]]
        assert e["observers"] == [ring[(ring.index(e["agent"]) + 1) % len(ring)]]
    # the groups schedule asks the class, not its name, whether it may run without a barrier
    _run(
        tmp_path, "ring_groups", f"communication._target_={ring_mode}", "simulation.schedule=groups"
    )
    assert _rows(tmp_path, "ring_groups") == _rows(tmp_path, "ring")


def test_the_modes_roles_come_from_its_class(tmp_path):
    # structured calls the modulator role: without one the stage stops before any model loads
    with pytest.raises(ConfigError, match="llm.roles.modulator"):
        _run(tmp_path, "s")


def test_the_replaced_mode_key_names_its_successor():
    problems = str(command_line_problems(["communication.mode=random"]).items)
    assert (
        "communication._target_" in problems and "communication=structured|random|none" in problems
    )
