"""A preference batch computed by hand, and the preference test every reference-free
objective passes (tests/train/test_orpo.py, test_simpo.py)."""

from __future__ import annotations

import math

import torch

from matrix.common.io import read_jsonl
from matrix.train.dpo import PairStats
from matrix.train.run import run_train
from tests.train.conftest import compose_train, tiny_overrides

# Two pairs: summed label log-probs and labelled-token counts of the chosen and rejected answers.
CHOSEN, CHOSEN_TOKENS = (-2.0, -9.0), (4, 6)
REJECTED, REJECTED_TOKENS = (-6.0, -2.0), (3, 2)


def hand_stats() -> PairStats:
    t = torch.tensor
    return PairStats(
        t(CHOSEN),
        t(REJECTED),
        t(CHOSEN_TOKENS, dtype=torch.float32),
        t(REJECTED_TOKENS, dtype=torch.float32),
    )


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def learns_the_preference(tmp_path, data_dir, objective: str, cls: str) -> None:
    """Trains `objective=<objective>` on the debug pairs: the chosen answers end above the
    rejected ones."""
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "dpo.jsonl",
            objective,
            f"objective={objective}",
            "data.batch_size=2",
            "trainer.max_epochs=3",
            "trainer.max_steps=6",
            "optimizer.lr=3e-3",
            "train.checkpoint.every_n_steps=0",
        )
    )
    manifest = run_train(cfg)
    assert manifest["config"]["train"]["objective"]["_target_"].endswith(cls)
    rows = read_jsonl(tmp_path / objective / "train" / "metrics.jsonl")
    assert len(rows) == manifest["counts"]["steps"] == 6
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    last = rows[-2:]
    assert sum(r["train/rewards/accuracy"] for r in last) / 2 > 0.75
    assert all(r["train/rewards/margin"] > 0 for r in last)
