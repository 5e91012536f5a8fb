"""Unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on Code")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them correct, passes).

    1 - C(n-c, k) / C(n, k), computed as a stable product instead of with huge binomials.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(results: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; `results[i]` are the pass/fail flags of problem i's samples."""
    if not results:
        raise ValueError("no problems to score")
    return float(np.mean([pass_at_k(len(r), int(sum(r)), k) for r in results]))
