"""Grouping at scale: balanced bisection (matrix.sim.bisection) against constrained K-means."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from matrix.sim.bisection import bisection_groups
from matrix.sim.grouping import GroupingError, constrained_groups, group_population
from matrix.sim.population import load_profiles

FIELDS = {
    "id": "id",
    "name": "name",
    "handle": "username",
    "bio": "description",
    "persona": "user_char_clean",
}


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "k", "lo", "hi"),
    [
        (1000, 200, 1, 10),  # the paper's bounds
        (997, 200, 1, 10),  # not a multiple of k
        (60, 12, 2, 7),
        (50, 10, 5, 5),  # one feasible size: every group exactly 5
        (103, 10, 10, 11),  # nearly forced
        (40, 3, 1, 40),
        (9, 1, 1, 10),
    ],
)
def test_bisection_respects_bounds_and_covers_everyone(n, k, lo, hi):
    vecs = _unit(np.random.default_rng(n).normal(size=(n, 24)))
    labels = bisection_groups(vecs, k, lo, hi, seed=0)
    assert len(labels) == n  # one label per agent: each agent in exactly one group
    sizes = np.bincount(labels, minlength=k)
    assert len(sizes) == k and sizes.min() >= lo and sizes.max() <= hi and sizes.sum() == n


def test_bisection_of_identical_vectors_still_respects_bounds():
    vecs = np.ones((30, 8), dtype=np.float32)
    sizes = np.bincount(bisection_groups(vecs, 7, 2, 6, seed=3), minlength=7)
    assert sizes.min() >= 2 and sizes.max() <= 6 and sizes.sum() == 30


def test_bisection_is_deterministic_for_a_seed():
    vecs = _unit(np.random.default_rng(0).normal(size=(500, 32)))
    assert bisection_groups(vecs, 100, 1, 10, seed=4) == bisection_groups(vecs, 100, 1, 10, 4)


def test_bisection_finds_planted_clusters():
    """Ten well-separated clusters of 30 and k=10 with sizes exactly 30: each group is one
    cluster (nothing less is a clustering)."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(10, 64)))
    truth = np.repeat(np.arange(10), 30)
    vecs = _unit(centres[truth] + 0.05 * rng.normal(size=(300, 64)))
    labels = np.asarray(bisection_groups(vecs, 10, 30, 30, seed=0))
    for g in range(10):
        assert len(set(truth[labels == g])) == 1


def _coherence(vecs: np.ndarray, labels) -> float:
    """Mean, over groups of two or more, of the mean cosine similarity of distinct pairs."""
    labels = np.asarray(labels)
    per_group = []
    for g in np.unique(labels):
        m = vecs[labels == g]
        if len(m) > 1:
            sims = m @ m.T
            per_group.append((sims.sum() - np.trace(sims)) / (len(m) * (len(m) - 1)))
    return float(np.mean(per_group))


def test_bisection_keeps_most_of_constrained_kmeans_coherence():
    """On 300 of the shipped profiles (real MiniLM embeddings, the paper's bounds 1-10 and 5
    agents per group), grouping is worth what it gains over random groups of the same sizes:
    the goal is groups whose members have something in common, so the scalable method must
    keep at least three quarters of constrained K-means' gain in mean intra-group cosine
    similarity over a random grouping."""
    from matrix.llm.embeddings import Encoder

    profiles, _ = load_profiles("matrix:data/profiles/oasis_x_synthetic_1000.jsonl", FIELDS)
    vecs = Encoder("embedded:all-minilm-l6-v2", cache_dir=".cache").encode(
        [p.describe() for p in profiles[:300]]
    )
    k = 60
    exact = _coherence(vecs, constrained_groups(vecs, k, 1, 10, seed=0))
    scalable = _coherence(vecs, bisection_groups(vecs, k, 1, 10, seed=0))
    chance = np.mean(
        [
            _coherence(vecs, np.random.default_rng(s).permutation(np.arange(300) % k))
            for s in range(5)
        ]
    )
    assert exact > chance  # the measure sees clustering at all
    assert scalable - chance >= 0.75 * (exact - chance), (scalable, exact, chance)


def test_threshold_picks_the_method_and_logs_it(caplog):
    vecs = _unit(np.random.default_rng(2).normal(size=(120, 16)))
    with caplog.at_level(logging.INFO, logger="matrix.sim.grouping"):
        at = group_population(vecs, 24, 1, 10, seed=0, exact_max=120)
        above = group_population(vecs, 24, 1, 10, seed=0, exact_max=119)
    assert at == constrained_groups(vecs, 24, 1, 10, seed=0)  # the paper's method, unchanged
    assert above == bisection_groups(vecs, 24, 1, 10, seed=0)
    assert "constrained K-means" in caplog.text and "balanced bisection" in caplog.text
    with pytest.raises(GroupingError, match="holds only"):
        group_population(vecs, 5, 1, 10, seed=0, exact_max=0)


def test_blocked_candidates_are_the_per_group_ones():
    """Above BLOCKED_ABOVE groups the modulator's inter-group candidates come a block at a
    time; they are the same groups, in the same order, as one group at a time."""
    from types import SimpleNamespace

    from matrix.sim.communication import Group
    from matrix.sim.modulator import StructuredCommunication

    vecs = _unit(np.random.default_rng(5).normal(size=(300, 16)))
    groups = [Group(id=g, members=[]) for g in range(300)]
    mod = StructuredCommunication.__new__(StructuredCommunication)
    mod.group_vectors, mod.limits, mod._nearest = vecs, SimpleNamespace(candidates=8), {}
    per_group = [mod._candidates(g, groups) for g in range(300)]
    mod._nearest = {}
    blocked: dict = {}
    while len(blocked) < 300:
        g = next(g for g in range(300) if g not in blocked)
        blocked.update(mod._nearest_block(g, groups))
        mod._nearest = blocked
    assert [blocked[g] for g in range(300)] == per_group


def test_random_recipients_drawn_without_a_list_per_action():
    import random

    from matrix.sim.communication import _Others

    for n, i in [(5, 0), (50, 49), (1000, 500)]:
        want = [j for j in range(n) if j != i]
        assert list(_Others(n, i)) == want
        a, b = random.Random(7), random.Random(7)
        assert [a.sample(want, 3) for _ in range(9)] == [
            b.sample(_Others(n, i), 3) for _ in range(9)
        ]


def test_agent_row_is_what_asdict_gives():
    """Agent.to_row is built shallow for speed (state.json each round); same row as asdict."""
    from dataclasses import asdict

    from matrix.sim.schemas import Agent

    profiles, _ = load_profiles("matrix:data/profiles/oasis_x_synthetic_1000.jsonl", FIELDS)
    a = Agent(3, profiles[5], goal="g", memory=["m1", "m2"], inbox=["i"], done_round=2)
    assert a.to_row() == asdict(a)
    assert Agent.from_row(a.to_row()) == a


def test_shipped_presets_keep_constrained_kmeans():
    """The default threshold is above the shipped population (1,000 profiles), so every
    shipped preset groups with the paper's method and keeps its groups."""
    from omegaconf import OmegaConf

    from matrix.common.io import resolve_data_path

    comm = OmegaConf.load("conf/communication/structured.yaml")
    shipped = resolve_data_path("matrix:data/profiles/oasis_x_synthetic_1000.jsonl")
    assert comm.exact_grouping_max >= len(shipped.read_text().splitlines())


def test_agent_row_is_a_copy():
    from matrix.sim.schemas import Agent

    profiles, _ = load_profiles("matrix:data/profiles/oasis_x_synthetic_1000.jsonl", FIELDS)
    a = Agent(0, profiles[0], memory=["m1"], inbox=["i"])
    row = a.to_row()
    a.memory.append("m2")
    a.inbox.clear()
    assert row["memory"] == ["m1"] and row["inbox"] == ["i"]
