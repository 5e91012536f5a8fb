"""How alike the simulated agents are (the paper's Fig. 6): cosine similarity between the sentence
embeddings of every two agents' profiles, split into pairs that share a group (and so a
modulator) and pairs that do not.

Profiles are embedded as the simulate stage embedded them for grouping (`Profile.describe`,
the `embedding.model` of the simulate run's config), so the figure shows the similarities the
grouping saw.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from matrix.common.io import read_json, read_jsonl
from matrix.sim.schemas import Profile

_PROFILE_FIELDS = {f.name for f in fields(Profile)}


@dataclass
class ProfileSimilarity:
    agent_ids: list[str]
    groups: list[int]  # per agent; -1 when the run recorded none
    matrix: np.ndarray  # agents x agents cosine similarity

    def pairs(self) -> list[tuple[str, str, float, bool]]:
        """(agent a, agent b, cosine, same group) for every unordered pair."""
        n = len(self.agent_ids)
        i, j = np.triu_indices(n, k=1)
        return [
            (
                self.agent_ids[a],
                self.agent_ids[b],
                round(float(self.matrix[a, b]), 4),
                self.groups[a] == self.groups[b] and self.groups[a] >= 0,
            )
            for a, b in zip(i.tolist(), j.tolist(), strict=True)
        ]

    def summary(self) -> dict[str, float | int]:
        pairs = self.pairs()
        sims = np.array([p[2] for p in pairs]) if pairs else np.zeros(0)
        same = np.array([p[2] for p in pairs if p[3]])
        other = np.array([p[2] for p in pairs if not p[3]])
        out: dict[str, float | int] = {"agents": len(self.agent_ids), "pairs": len(pairs)}
        for name, xs in (("all", sims), ("same_group", same), ("other_group", other)):
            if len(xs):
                out[f"mean_cosine_{name}"] = round(float(xs.mean()), 4)
        return out


def _profile(agent: dict[str, Any]) -> Profile:
    p = {k: v for k, v in (agent.get("profile") or {}).items() if k in _PROFILE_FIELDS}
    for k in ("topics", "posts"):
        p[k] = tuple(p.get(k) or ())
    return Profile(**{"id": "", "name": "", "bio": "", "persona": "", **p})


def encoder_model(sim_dir: Path) -> str | None:
    """The sentence encoder the simulate run grouped with (its manifest's config)."""
    mf = sim_dir / "manifest.json"
    if not mf.is_file():
        return None
    return ((read_json(mf).get("config") or {}).get("embedding") or {}).get("model")


def profile_similarity(sim_dir: Path, encoder: Any) -> ProfileSimilarity:
    agents = sorted(read_jsonl(sim_dir / "agents.jsonl"), key=lambda a: a.get("index", 0))
    profiles = [_profile(a) for a in agents]
    ids = [
        p.id or f"agent-{a.get('index', i)}"
        for i, (p, a) in enumerate(zip(profiles, agents, strict=True))
    ]
    groups = [int(a["group"]) if a.get("group") is not None else -1 for a in agents]
    if not profiles:
        return ProfileSimilarity([], [], np.zeros((0, 0)))
    vecs = np.asarray(encoder.encode([p.describe() for p in profiles]), dtype=np.float64)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return ProfileSimilarity(ids, groups, vecs @ vecs.T)
