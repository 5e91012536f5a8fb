"""The simulate stage end to end on the tiny random model: outputs, manifest, W&B, resume."""

import json

import pytest

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigError
from matrix.sim.run import run_simulate
from tests.conftest import compose, tiny_llm_overrides


def _overrides(tmp_path, model_dir, name="t", *extra):
    return [
        "debug=tiny",
        f"paths.runs_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}/cache",
        f"run.name={name}",
        *tiny_llm_overrides(model_dir),
        *extra,
    ]


def test_tiny_simulation_writes_every_output(tmp_path, tiny_model_dir):
    cfg = compose("simulate", _overrides(tmp_path, tiny_model_dir))
    counts = run_simulate(cfg)
    out = tmp_path / "t" / "simulate"
    for f in (
        "agents.jsonl",
        "groups.json",
        "events.jsonl",
        "scenarios.jsonl",
        "report.md",
        "manifest.json",
        "state.json",
    ):
        assert (out / f).exists(), f
    events, scenarios = read_jsonl(out / "events.jsonl"), read_jsonl(out / "scenarios.jsonl")
    assert counts["rounds"] == 4 and len(events) == 8 * 4 == counts["events"]
    assert len({e["id"] for e in events}) == len(events)
    # interval 2 over 4 rounds in 2 groups: 4 scenarios, each naming its events and people
    assert len(scenarios) == 4
    ev_ids = {e["id"] for e in events}
    for s in scenarios:
        assert s["summary"] and set(s["events"]) <= ev_ids and s["participants"]
    groups = json.loads((out / "groups.json").read_text())
    assert sorted(len(g["members"]) for g in groups["groups"]) and all(
        2 <= len(g["members"]) <= 6 for g in groups["groups"]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["scenarios"] == 4
    assert manifest["llm"]["roles"]["agent"]["calls"] > 0
    assert manifest["llm"]["roles"]["agent"]["max_batch"] == 8  # all agents in one batch
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run"


# Killed and resumed: tests/core/test_kill_resume.py (every stage, random kill points).


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("communication.k=0", "communication.k"),
        ("communication._target_=matrix.sim.telepathy.Telepathy", "communication._target_"),
        ("communication._target_=matrix.sim.run.validate", "not a subclass of"),
        ("communication.unparsed=shout", "communication.unparsed"),
        ("population.path=/nonexistent.jsonl", "population.path"),
        ("population.on_error=ignore", "population.on_error"),
        ("simulation.max_rounds=0", "simulation.max_rounds"),
        ("communication.size_min=5", "needs 10 agents"),
    ],
)
def test_bad_config_fails_before_any_model_loads(tmp_path, override, message):
    # the model path does not exist: reaching a model load would raise a different error
    cfg = compose(
        "simulate",
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            "logger=none",
            "llm.backends.smollm2.model=/no/model",
            override,
        ],
    )
    with pytest.raises(ConfigError, match=message):
        run_simulate(cfg)
