"""Structured communication, part 1: who shares a modulator.

Profiles are embedded and clustered with size-constrained K-means (the paper: K=200 groups of
1-10 agents for 1,000 agents), using the maintained `k-means-constrained` package. Its cost
grows with agents x groups, so populations above `communication.exact_grouping_max` agents
are grouped by balanced recursive bisection (matrix.sim.bisection) under the same bounds.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from matrix.common.validation import ConfigError
from matrix.sim.bisection import bisection_groups

log = logging.getLogger(__name__)


class GroupingError(ConfigError):
    pass


def check_bounds(n_agents: int, k: int, size_min: int, size_max: int) -> None:
    """Raise if no grouping of n_agents into k groups can respect the size bounds."""
    problems = []
    if k < 1:
        problems.append(f"communication.k={k}: must be >= 1")
    if size_min < 1:
        problems.append(f"communication.size_min={size_min}: must be >= 1")
    if size_max < size_min:
        problems.append(f"communication.size_max={size_max} < size_min={size_min}")
    if not problems and k * size_min > n_agents:
        problems.append(
            f"communication.k={k} groups x size_min={size_min} needs {k * size_min} agents, "
            f"the population has {n_agents}; lower k or size_min"
        )
    if not problems and k * size_max < n_agents:
        problems.append(
            f"communication.k={k} groups x size_max={size_max} holds only {k * size_max} of "
            f"{n_agents} agents; raise k (>= {math.ceil(n_agents / size_max)}) or size_max"
        )
    if problems:
        raise GroupingError("; ".join(problems))


def constrained_groups(
    vectors: np.ndarray, k: int, size_min: int, size_max: int, seed: int
) -> list[int]:
    """Group label per row; every group holds between size_min and size_max rows."""
    n = len(vectors)
    check_bounds(n, k, size_min, size_max)
    if k == 1:
        return [0] * n
    # No group can hold more than what the other k-1 groups leave at their minimum; saying so
    # changes no feasible grouping, and k-means-constrained refuses size_max >= n.
    size_max = min(size_max, n - (k - 1) * size_min)
    from k_means_constrained import KMeansConstrained

    km = KMeansConstrained(
        n_clusters=k, size_min=size_min, size_max=size_max, random_state=seed, n_init=4, n_jobs=1
    )
    labels = km.fit_predict(np.asarray(vectors, dtype=np.float64))
    return [int(x) for x in labels]


def group_population(
    vectors: np.ndarray, k: int, size_min: int, size_max: int, seed: int, exact_max: int
) -> list[int]:
    """Constrained K-means up to `exact_max` agents (the paper's method), balanced bisection
    above; logs which ran."""
    n = len(vectors)
    if n <= exact_max:
        log.info("grouping: %d agents into %d groups by constrained K-means", n, k)
        return constrained_groups(vectors, k, size_min, size_max, seed)
    check_bounds(n, k, size_min, size_max)
    log.info(
        "grouping: %d agents into %d groups by balanced bisection "
        "(more than communication.exact_grouping_max=%d)",
        n,
        k,
        exact_max,
    )
    return bisection_groups(vectors, k, size_min, size_max, seed)
