"""Sharded runs merged through their manifests equal one unsharded run, row for row.

The LLM double answers from the prompt alone, so equality tests the slicing and merging,
not batch-invariance of a real model. Simulate shards own disjoint groups; the unsharded
reference turns inter-group routing off, since a shard cannot forward events to groups
another shard simulates.

Generate is the exception: its rows cannot equal an unsharded run's. A shard draws its
seeds from its own scenarios, numbers its sampling streams apart from the other shards'
and filters duplicates against its own rows only, so different candidates are written and
kept. What the generate tests check instead is what sharding promises: each shard uses only
the scenarios (or personas) it owns, the shares of a target add up to the target, the
merge is the union of the shards' rows with cross-shard duplicates dropped and counted,
and the merge refuses incomplete, duplicated or mixed shards.
"""

import json
import shutil
from collections import Counter

import pytest

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigError
from matrix.core.merge import merge
from matrix.core.shard import Shard
from matrix.gen.filters import normalize
from matrix.gen.run import run_generate
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles
from matrix.sim.run import run_simulate
from tests.conftest import compose
from tests.doubles import (
    QUESTIONS,
    SCRIPTED_ROLES,
    PromptHashLLM,
    compose_generate,
    scripted_backends,
)


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


# -- generate ---------------------------------------------------------------------------------
def _gen_cfg(tmp_path, sim_dir, name, *extra):
    return compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        f"run.name={name}",
        "generate.filters.near_dup_threshold=0.95",
        *SCRIPTED_ROLES,
        *extra,
    )


def _gen_shards(tmp_path, sim_dir, name, count, *extra, backends=scripted_backends):
    for i in range(count):
        cfg = _gen_cfg(tmp_path, sim_dir, name, f"shard.count={count}", f"shard.index={i}", *extra)
        run_generate(cfg, backends=backends())
    return tmp_path / "runs" / name / "generate"


def _owner_key(row, scenario_pos):
    """The position the ownership rule looks at: the scenario's in scenarios.jsonl, or (for
    persona rows) the agent's in agent-index order (agents 0..5 in the fixture)."""
    lin = row["lineage"]
    if lin["source"] == "simulation":
        return scenario_pos[lin["scenario_ids"][0]]
    return lin["agent_indices"][0]


@pytest.mark.parametrize(("generator", "count"), [("tiny", 3), ("persona_only", 2)])
def test_generate_shards_own_their_inputs_and_merge_to_the_target(
    tmp_path, sim_dir, generator, count
):
    extra = [f"generator={generator}"]
    if generator == "persona_only":
        extra.append("generator.sets.persona_only.target=5")
    ref_cfg = _gen_cfg(tmp_path, sim_dir, "ref", *extra)
    ref = run_generate(ref_cfg, backends=scripted_backends())
    out = _gen_shards(tmp_path, sim_dir, "sh", count, *extra)

    scenario_pos = {r["id"]: i for i, r in enumerate(read_jsonl(sim_dir / "scenarios.jsonl"))}
    shard_rows = []
    for i in range(count):
        d = out / "shards" / f"{i}-of-{count}"
        m = json.loads((d / "manifest.json").read_text())
        for s in ref["sets"]:  # each shard's part of each target (tiny: general 4 -> 2, 1, 1)
            assert m["counts"][f"set/{s['name']}"] == Shard(i, count).share(s["target"])
        for f in (d / "sets").glob("*.jsonl"):
            rows = read_jsonl(f)
            assert all(_owner_key(r, scenario_pos) % count == i for r in rows), f
            assert all(int(r["id"].rsplit("-", 1)[1]) % count == i for r in rows)  # ids
            shard_rows += rows

    m = merge("generate", _gen_cfg(tmp_path, sim_dir, "sh", *extra))
    by_kind = {
        k: read_jsonl(out / f"{k}.jsonl") for k in ("sft", "dpo") if (out / f"{k}.jsonl").exists()
    }
    merged = [r for rows in by_kind.values() for r in rows]
    # The scripted generator picks from 20 questions, so shards can repeat each other:
    # the merge is the union of the shard rows less the duplicates it dropped.
    cross = [r for r in read_jsonl(out / "filtered.jsonl") if r.get("cross_shard")]
    assert m["counts"]["cross_shard_dups"] == len(cross)
    assert _multiset(merged) + _multiset(r["row"] for r in cross) == _multiset(shard_rows)
    assert len({r["id"] for r in merged}) == len(merged)
    for rows in by_kind.values():  # the duplicate filter works per kind, as unsharded
        keys = [normalize(r.get("messages", r.get("prompt"))[0]["content"]) for r in rows]
        assert len(set(keys)) == len(keys)
    # every set holds its unsharded target, less the cross-shard duplicates dropped from it
    for s in ref["sets"]:
        lost = sum(r["set"] == s["name"] for r in cross)
        assert m["counts"][f"set/{s['name']}"] == s["target"] - lost
    ref_manifest = json.loads((tmp_path / "runs/ref/generate/manifest.json").read_text())
    assert m["config_hash"] == ref_manifest["config_hash"]  # the pipeline reuses the merge
    for f in ("datacard.md", "stats.json", "filtered.jsonl", "hf/dataset_dict.json"):
        assert (out / f).exists(), f
    assert sum(len(read_jsonl(out / "sets" / f"{s['name']}.jsonl")) for s in ref["sets"]) == len(
        merged
    )


class SameQuestionsGenerator:
    """Every instance writes QUESTIONS in the same order: two shards write the same rows."""

    name = "same-questions"

    def __init__(self):
        self.n = 0

    def generate(self, chats, sampling):
        out = []
        for _ in chats:
            q = QUESTIONS[self.n % len(QUESTIONS)]
            self.n += 1
            out.append(Completion(f'Here is the request: "{q}"', 50, 12, "stop", self.name))
        return out


def test_generate_merge_drops_cross_shard_duplicates_and_counts_them(tmp_path, sim_dir):
    """An unsharded run would have filtered these duplicates (and generated replacements,
    which a merge cannot): the merge drops them, so the merged set is short by that many."""

    def backends():
        return {**scripted_backends(), "gen": SameQuestionsGenerator()}

    extra = ["generator=sft_general", "generator.sets.general.target=6"]
    out = _gen_shards(tmp_path, sim_dir, "dup", 2, *extra, backends=backends)
    m = merge("generate", _gen_cfg(tmp_path, sim_dir, "dup", *extra))
    merged = read_jsonl(out / "sft.jsonl")
    # shard 0 and shard 1 both wrote QUESTIONS[0..2]: shard 1's three rows duplicate them
    assert m["counts"]["cross_shard_dups"] == 3 and len(merged) == 3
    assert m["counts"]["set/general"] == 3
    assert all(int(r["id"].rsplit("-", 1)[1]) % 2 == 0 for r in merged)  # the earlier ids win
    texts = [normalize(r["messages"][0]["content"]) for r in merged]
    assert len(set(texts)) == len(texts)
    cross = [r for r in read_jsonl(out / "filtered.jsonl") if r.get("cross_shard")]
    assert sorted(r["reason"] for r in cross) == ["exact_dup"] * 3
    assert m["sets"][0]["filtered"]["exact_dup"] >= 3


def test_generate_merge_refuses_incomplete_duplicated_and_mixed_shards(tmp_path, sim_dir):
    extra = ["generator=sft_general", "generator.sets.general.target=2"]
    c0 = _gen_cfg(tmp_path, sim_dir, "bad", *extra, "shard.count=2", "shard.index=0")
    run_generate(c0, backends=scripted_backends())  # shard 0 only
    out = tmp_path / "runs/bad/generate"
    with pytest.raises(ConfigError, match=r"shards \[1\] of 2 never ran"):
        merge("generate", _gen_cfg(tmp_path, sim_dir, "bad", *extra))
    # shard 0's folder copied as shard 1: the same rows twice
    shutil.copytree(out / "shards/0-of-2", out / "shards/1-of-2")
    with pytest.raises(ConfigError, match="expected index 1 of 2"):
        merge("generate", _gen_cfg(tmp_path, sim_dir, "bad", *extra))
    shutil.rmtree(out / "shards/1-of-2")
    c1 = _gen_cfg(tmp_path, sim_dir, "bad", *extra, "shard.count=2", "shard.index=1", "seed=7")
    run_generate(c1, backends=scripted_backends())
    with pytest.raises(ConfigError, match="different configs"):
        merge("generate", _gen_cfg(tmp_path, sim_dir, "bad", *extra))
    (out / "shards/1-of-2/manifest.json").unlink()  # a shard killed before it finished
    with pytest.raises(ConfigError, match="did not finish"):
        merge("generate", _gen_cfg(tmp_path, sim_dir, "bad", *extra))
    assert not (out / "manifest.json").exists() and not (out / "sft.jsonl").exists()
