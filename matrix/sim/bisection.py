"""Size-bounded grouping for large populations: balanced recursive 2-means bisection.

Constrained K-means (matrix.sim.grouping, the paper's method) solves a min-cost flow over
every agent x group pair each iteration, O(agents x groups) = O(agents^2 / 5): fine at the
paper's 1,000 agents, out of reach at 100,000. This method splits the population in two,
each half in two again, until there are k parts, in O(agents x dim x log k):

- a part holding n agents that must become k' groups is split into a left part of k'//2
  groups and a right one of the rest; the left part's size is the natural 2-means split
  (agents nearer the left centroid), clipped to what keeps both halves feasible
  (k'' x size_min <= size <= k'' x size_max) and to within `SLACK` of the size proportional
  to its groups, so group sizes stay near the population's mean;
- the 2-means split starts from the part's principal direction (power iteration, seeded)
  and runs a few Lloyd steps, each assigning by the signed distance to the two centroids and
  cutting at the clipped size, so the halves hold exactly that many agents.

Every part of k' groups holds between k' x size_min and k' x size_max agents, so every final
group (k' = 1) respects the bounds exactly and each agent is in exactly one group.
"""

from __future__ import annotations

import numpy as np

# A half may hold up to this fraction more or fewer agents than its share of the groups.
SLACK = 0.25
LLOYD_STEPS = 6
POWER_STEPS = 8


def bisection_groups(
    vectors: np.ndarray, k: int, size_min: int, size_max: int, seed: int
) -> list[int]:
    """Group label per row (0..k-1); every group holds between size_min and size_max rows.
    The caller checks that the bounds admit a grouping (matrix.sim.grouping.check_bounds)."""
    x = np.asarray(vectors, dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int64)
    rng = np.random.default_rng(seed)
    next_label = 0
    stack = [(np.arange(len(x)), k)]
    while stack:
        idx, parts = stack.pop()
        if parts == 1:
            labels[idx] = next_label
            next_label += 1
            continue
        left_parts = parts // 2
        left, right = _split(x[idx], left_parts, parts - left_parts, size_min, size_max, rng)
        # right pushed first: the left half is labelled first (labels follow the split order)
        stack.append((idx[right], parts - left_parts))
        stack.append((idx[left], left_parts))
    return labels.tolist()


def _bounds(n: int, kl: int, kr: int, size_min: int, size_max: int) -> tuple[int, int]:
    """The left half's sizes that keep both halves feasible, within SLACK of proportional."""
    lo = max(kl * size_min, n - kr * size_max)
    hi = min(kl * size_max, n - kr * size_min)
    share = n * kl / (kl + kr)
    lo_s, hi_s = int(np.floor(share * (1 - SLACK))), int(np.ceil(share * (1 + SLACK)))
    # the slack band always overlaps [lo, hi] (proportional sizes are feasible); keep both
    return max(lo, min(lo_s, hi)), min(hi, max(hi_s, lo))


def _split(
    x: np.ndarray, kl: int, kr: int, size_min: int, size_max: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the left and right halves of x (rows), sizes within _bounds."""
    n = len(x)
    lo, hi = _bounds(n, kl, kr, size_min, size_max)
    centre = x.mean(0)
    xc = x - centre
    v = rng.standard_normal(x.shape[1]).astype(np.float32)
    for _ in range(POWER_STEPS):
        v = xc.T @ (xc @ v)
        norm = float(np.linalg.norm(v))
        if norm == 0.0:  # identical rows: any split is as good
            break
        v /= norm
    score = xc @ v
    for _ in range(LLOYD_STEPS):
        left = _cut(score, lo, hi)
        mask = np.zeros(n, dtype=bool)
        mask[left] = True
        c1, c2 = x[mask].mean(0), x[~mask].mean(0)
        # < 0: nearer c1 (|x-c1|^2 - |x-c2|^2 = 2 x.(c2-c1) + |c1|^2 - |c2|^2, halved)
        score = (c1 @ c1 - c2 @ c2) / 2 - x @ (c1 - c2)
    left = _cut(score, lo, hi)
    mask = np.zeros(n, dtype=bool)
    mask[left] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _cut(score: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Positions of the m lowest scores, m = the count of negative scores clipped to
    [lo, hi]; ties broken by position, so the cut is deterministic."""
    m = int(np.clip(int((score < 0).sum()), lo, hi))
    order = np.argsort(score, kind="stable")
    return order[:m]
