"""Scenario retrieval for a data need: cosine similarity of summaries to the need text, with
maximal marginal relevance (MMR) so the top-k is not k near-copies of one story."""

from __future__ import annotations

import numpy as np


def mmr(query: np.ndarray, docs: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of `k` docs chosen greedily by lam * sim(q, d) - (1 - lam) * max sim(d, chosen).

    Vectors are L2-normalised, so dot products are cosines. lam = 1 is plain top-k.
    """
    n = len(docs)
    k = min(k, n)
    if k <= 0:
        return []
    relevance = docs @ query
    chosen: list[int] = []
    # Highest similarity of every doc to anything chosen so far.
    redundancy = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = lam * relevance - (1.0 - lam) * penalty
        score[~available] = -np.inf
        # argmax takes the first maximum: ties go to the earlier scenario, deterministically.
        j = int(np.argmax(score))
        chosen.append(j)
        available[j] = False
        redundancy = np.maximum(redundancy, docs @ docs[j])
    return chosen
