"""Sharded runs merged through their manifests equal one unsharded run, row for row.

The LLM double answers from the prompt alone, so equality tests the slicing and merging,
not batch-invariance of a real model. Simulate shards own disjoint groups; the unsharded
reference turns inter-group routing off, since a shard cannot forward events to groups
another shard simulates.
"""

import json
from collections import Counter

import pytest

from matrix.io import read_jsonl
from matrix.llm.roles import Roles
from matrix.merge import merge
from matrix.sim.run import run_simulate
from matrix.validation import ConfigError
from tests.conftest import compose
from tests.robustness.doubles import PromptHashLLM


def _cfg(stage, tmp_path, name, *extra):
    return compose(
        stage,
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            f"paths.cache_dir={tmp_path}/cache",
            f"run.name={name}",
            "logger=none",
            "communication.inter_group=false",
            "communication.k=4",
            "population.size=12",
            *extra,
        ],
    )


def _roles(cfg):
    return Roles(cfg.llm, {"smollm2": PromptHashLLM()})


def _multiset(rows, drop=()):
    return Counter(
        json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in rows
    )


def test_simulate_shards_merge_to_the_unsharded_rows(tmp_path):
    ref_cfg = _cfg("simulate", tmp_path, "ref")
    run_simulate(ref_cfg, _roles(ref_cfg))
    for i in range(2):
        c = _cfg("simulate", tmp_path, "sh", "shard.count=2", f"shard.index={i}")
        run_simulate(c, _roles(c))
    assert (tmp_path / "sh/simulate/shards/1-of-2/manifest.json").exists()
    m = merge("simulate", _cfg("simulate", tmp_path, "sh", "shard.count=2"))
    ref, out = tmp_path / "ref/simulate", tmp_path / "sh/simulate"
    assert m["counts"]["events"] == len(read_jsonl(ref / "events.jsonl")) > 0
    assert read_jsonl(out / "events.jsonl") == read_jsonl(ref / "events.jsonl")
    # scenario ids are numbered per shard (unique: the group id is part of the id)
    assert _multiset(read_jsonl(out / "scenarios.jsonl"), {"id"}) == _multiset(
        read_jsonl(ref / "scenarios.jsonl"), {"id"}
    )
    assert read_jsonl(out / "agents.jsonl") == read_jsonl(ref / "agents.jsonl")
    assert (
        json.loads((out / "manifest.json").read_text())["config_hash"]
        == json.loads((ref / "manifest.json").read_text())["config_hash"]
    )


def test_merge_refuses_missing_and_mixed_shards(tmp_path):
    c0 = _cfg("simulate", tmp_path, "mix", "shard.count=2", "shard.index=0")
    run_simulate(c0, _roles(c0))
    with pytest.raises(ConfigError, match=r"shards \[1\] of 2 never ran"):
        merge("simulate", _cfg("simulate", tmp_path, "mix"))
    c1 = _cfg("simulate", tmp_path, "mix", "shard.count=2", "shard.index=1", "seed=7")
    run_simulate(c1, _roles(c1))
    with pytest.raises(ConfigError, match="different configs"):
        merge("simulate", _cfg("simulate", tmp_path, "mix"))


def test_evaluate_shards_merge_to_the_unsharded_scores(tmp_path):
    from matrix.eval.run import run_evaluate

    ref_cfg = _cfg("evaluate", tmp_path, "ref")
    ref_scores = run_evaluate(ref_cfg, _roles(ref_cfg))
    for i in range(3):
        c = _cfg("evaluate", tmp_path, "sh", "shard.count=3", f"shard.index={i}")
        run_evaluate(c, _roles(c))
    merge("evaluate", _cfg("evaluate", tmp_path, "sh"))
    ref, out = tmp_path / "ref/evaluate", tmp_path / "sh/evaluate"
    for bench in ref_scores:
        for kind in ("answers", "judgments"):
            assert read_jsonl(out / bench / f"{kind}.jsonl") == read_jsonl(
                ref / bench / f"{kind}.jsonl"
            )
    assert json.loads((out / "scores.json").read_text())["scores"] == ref_scores
