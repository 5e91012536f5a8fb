"""Which schema types which key: each stage's settings.py, through blocks, maps and nulls."""

from __future__ import annotations

import pytest

from matrix.common.schema import describe
from matrix.core.value_check import key_type, schema_of


def test_each_stage_types_the_shared_keys_and_its_own():
    shared = {"run", "paths", "shard", "seed"}
    assert shared | {"llm", "simulation", "scenario", "population", "agent"} <= set(
        schema_of("simulate")
    )
    assert shared | {"llm", "generate", "generator"} <= set(schema_of("generate"))
    assert shared | {"llm", "eval"} <= set(schema_of("evaluate"))
    assert shared <= set(schema_of("train")) and "llm" not in schema_of("train")
    assert set(schema_of("pipeline")) >= set(schema_of("simulate")) | set(schema_of("evaluate"))


@pytest.mark.parametrize(
    ("key", "takes"),
    [
        ("seed", "an integer"),
        ("shard.count", "an integer >= 1"),
        ("simulation.schedule", "one of 'lockstep', 'groups'"),
        ("population.size", "an integer >= 1 or null"),
        ("generator.sets.any_name.kind", "one of 'sft', 'dpo'"),
        ("generate.retrieval.mmr_lambda", "a number in [0, 1]"),
        ("llm.roles.judge.top_p", "a number in (0, 1]"),
        ("eval.benchmarks.arena_hard.unparsed_verdicts", "one of 'loss', 'drop'"),
        ("eval.benchmarks.humaneval.ks", "a list of integers >= 1 or null"),
        ("data.limit", "an integer >= 1 or null"),
    ],
)
def test_a_key_maps_to_its_field(key, takes):
    assert describe(key_type(key)) == takes


@pytest.mark.parametrize(
    "key", ["communication.k", "llm.backends.smollm2.model", "optimizer.lr", "no.such.key"]
)
def test_open_or_untyped_keys_have_no_type(key):
    assert key_type(key) is None
