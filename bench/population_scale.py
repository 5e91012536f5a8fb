"""What bench/simulate.py needs to run populations larger than the shipped 1,000 profiles.

- `synthesize`: a JSONL of n profiles cycling the shipped ones (copy c of profile j has id
  `<id>~c` and name `<name> c`); written by the bench, the package ships no such file.
- `CopyEncoder`: embeds the shipped profiles once and gives copy c of profile j profile j's
  vector plus seeded Gaussian noise (norm ~ `NOISE`), renormalised: MiniLM on 100K texts is
  hours on two cores, and copies differ only in names, which the profile text does not hold
  after anonymization anyway.
- `timed`: setup seconds, seconds per round, and the double's own share of each round.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np

SHIPPED = "matrix:data/profiles/oasis_x_synthetic_1000.jsonl"
NOISE = 0.1


def synthesize(n: int, out: Path) -> tuple[Path, int]:
    """n profiles, copy-major (all shipped profiles, then their first copies, ...); returns
    the file and the number of shipped profiles."""
    from matrix.common.io import resolve_data_path

    base = [json.loads(x) for x in resolve_data_path(SHIPPED).read_text().splitlines() if x]
    with out.open("w") as f:
        for i in range(n):
            c, row = divmod(i, len(base))
            row = dict(base[row])
            if c:
                row["id"] = f"{row['id']}~{c}"
                row["name"] = f"{row['name']} {c}"
                row["username"] = f"{row['username']}{c}"
            f.write(json.dumps(row) + "\n")
    return out, len(base)


def copy_encoder(base_n: int):
    """An Encoder class for matrix.sim.run: the first base_n texts are encoded, row i reuses
    row i % base_n's vector, perturbed (the file is copy-major, so row i is a copy of it)."""
    from matrix.llm.embeddings import Encoder

    class CopyEncoder(Encoder):
        def encode(self, texts):
            if len(texts) <= base_n:
                return super().encode(texts)
            vecs = super().encode(list(texts[:base_n]))
            rng = np.random.default_rng(0)
            out = vecs[np.arange(len(texts)) % base_n].astype(np.float32)
            noise = rng.standard_normal(out.shape).astype(np.float32)
            out[base_n:] += NOISE / np.sqrt(out.shape[1]) * noise[base_n:]
            out /= np.linalg.norm(out, axis=1, keepdims=True)
            return out

    return CopyEncoder


class Timer:
    """Wall seconds of setup and of each round (Simulation.step: one lock-step round), and
    the seconds the LLM double spent inside each."""

    def __init__(self, double) -> None:
        self.double = double
        self.t0 = time.perf_counter()
        self.setup_s = 0.0
        self.rounds: list[float] = []
        self.double_rounds: list[float] = []

    def install(self) -> None:
        import matrix.sim.run as run_mod
        from matrix.sim.engine import Simulation

        setup, step = run_mod.restore_or_set_up, Simulation.step

        def timed_setup(*a, **kw):
            out = setup(*a, **kw)
            self.setup_s = time.perf_counter() - self.t0
            return out

        def timed_step(sim, state):
            t, d = time.perf_counter(), self.double.seconds
            step(sim, state)
            self.rounds.append(time.perf_counter() - t)
            self.double_rounds.append(self.double.seconds - d)

        run_mod.restore_or_set_up = timed_setup
        Simulation.step = timed_step

    def report(self, agents: int) -> str:
        rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if not self.rounds:  # simulation.schedule=groups runs no lock-step Simulation.step
            return f"scale: agents={agents} setup_s={self.setup_s:.1f} peak_rss_gib={rss_gib:.2f}"
        engine = [r - d for r, d in zip(self.rounds, self.double_rounds, strict=True)]
        return (
            f"scale: agents={agents} setup_s={self.setup_s:.1f} "
            f"round_s={' '.join(f'{x:.2f}' for x in self.rounds)} "
            f"double_s={' '.join(f'{x:.2f}' for x in self.double_rounds)} "
            f"engine_s_per_1k_agents={' '.join(f'{x / agents * 1000:.3f}' for x in engine)} "
            f"peak_rss_gib={rss_gib:.2f}"
        )
