"""ORPO: the loss against its paper's formula on a batch computed by hand, and trained on
the debug pairs it learns the preference."""

from __future__ import annotations

import math

import pytest

from matrix.train.orpo import orpo_loss
from tests.train.pairs import (
    CHOSEN,
    CHOSEN_TOKENS,
    REJECTED,
    REJECTED_TOKENS,
    hand_stats,
    learns_the_preference,
    log_sigmoid,
)


def test_orpo_is_the_papers_formula_on_a_hand_computed_batch():
    """Hong et al. (2024) eq. 6-8: L = L_SFT + lambda * L_OR, L_OR = -log sigmoid(log(odds_w /
    odds_l)), odds = P / (1 - P), P = exp(mean token log-prob); L_SFT the chosen answers'
    per-token NLL."""
    beta = 0.1
    nll = -sum(CHOSEN) / sum(CHOSEN_TOKENS)  # 11 / 10
    ratios = []
    for cw, nw, cl, nl in zip(CHOSEN, CHOSEN_TOKENS, REJECTED, REJECTED_TOKENS, strict=True):
        pw, pl = math.exp(cw / nw), math.exp(cl / nl)
        ratios.append(log_sigmoid(math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))))
    want = nll - beta * sum(ratios) / len(ratios)
    loss, metrics = orpo_loss(hand_stats(), beta)
    # float32 (eps 1.2e-7) over a few operations on numbers of order 1: 1e-5 relative holds on
    # any machine, while a wrong term (a sum for a mean, log1p(-exp) dropped) moves it by > 1e-2
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)
    # rewards are beta x mean log-prob: pair 1 prefers chosen (-0.5 > -2), pair 2 not (-1.5 < -1)
    assert metrics["rewards/chosen"] == pytest.approx(beta * (-0.5 - 1.5) / 2, rel=1e-5)
    assert metrics["rewards/accuracy"] == pytest.approx(0.5)


def test_orpo_learns_the_preference(tmp_path, data_dir):
    learns_the_preference(tmp_path, data_dir, "orpo", "ORPOModule")
