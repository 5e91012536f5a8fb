"""Diversity statistics of a generated dataset, for the data card and the manifest."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over the texts (word tokens, lowercased)."""
    total, seen = 0, set()
    for t in texts:
        toks = _TOKEN.findall(t.lower())
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return round(len(seen) / total, 4) if total else 0.0


def embedding_spread(vectors: np.ndarray, max_rows: int = 2000, seed: int = 0) -> float:
    """Mean pairwise cosine distance (1 - cos) of L2-normalised vectors; 0 = all identical.

    Above `max_rows` a fixed random sample is used: the all-pairs matrix grows quadratically.
    """
    n = len(vectors)
    if n < 2:
        return 0.0
    if n > max_rows:
        vectors = vectors[np.random.default_rng(seed).choice(n, max_rows, replace=False)]
        n = max_rows
    sims = vectors @ vectors.T
    mean_sim = (sims.sum() - np.trace(sims)) / (n * (n - 1))
    return round(float(1.0 - mean_sim), 4)


def coverage(rows: Sequence[dict], n_scenarios: int, n_agents: int) -> dict[str, float | int]:
    scen = {s for r in rows for s in r["lineage"]["scenario_ids"]}
    agents = {a for r in rows for a in r["lineage"]["agent_ids"]}
    return {
        "scenarios_used": len(scen),
        "scenarios_total": n_scenarios,
        "scenario_coverage": round(len(scen) / n_scenarios, 4) if n_scenarios else 0.0,
        "agents_used": len(agents),
        "agents_total": n_agents,
        "agent_coverage": round(len(agents) / n_agents, 4) if n_agents else 0.0,
    }


def diversity(
    instructions: Sequence[str], responses: Sequence[str], vectors: np.ndarray
) -> dict[str, float]:
    return {
        "instruction_distinct_1": distinct_n(instructions, 1),
        "instruction_distinct_2": distinct_n(instructions, 2),
        "response_distinct_1": distinct_n(responses, 1),
        "response_distinct_2": distinct_n(responses, 2),
        "instruction_embedding_spread": embedding_spread(vectors),
        "mean_instruction_chars": round(float(np.mean([len(t) for t in instructions])), 1)
        if instructions
        else 0.0,
        "mean_response_chars": round(float(np.mean([len(t) for t in responses])), 1)
        if responses
        else 0.0,
    }
