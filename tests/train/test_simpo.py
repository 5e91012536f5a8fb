"""SimPO: the loss against its paper's formula on a batch computed by hand, and trained on
the debug pairs it learns the preference."""

from __future__ import annotations

import pytest

from matrix.train.simpo import simpo_loss
from tests.train.pairs import (
    CHOSEN,
    CHOSEN_TOKENS,
    REJECTED,
    REJECTED_TOKENS,
    hand_stats,
    learns_the_preference,
    log_sigmoid,
)


def test_simpo_is_the_papers_formula_on_a_hand_computed_batch():
    """Meng et al. (2024) eq. 6: L = -log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l| log
    pi(y_l|x) - gamma)."""
    beta, gamma = 2.0, 1.0
    terms = [
        log_sigmoid(beta * cw / nw - beta * cl / nl - gamma)
        for cw, nw, cl, nl in zip(CHOSEN, CHOSEN_TOKENS, REJECTED, REJECTED_TOKENS, strict=True)
    ]
    loss, metrics = simpo_loss(hand_stats(), beta, gamma)
    assert float(loss) == pytest.approx(-sum(terms) / len(terms), rel=1e-5)
    assert metrics["rewards/margin"] == pytest.approx(
        beta * ((-0.5 + 2.0) + (-1.5 + 1.0)) / 2, rel=1e-5
    )
    assert metrics["rewards/accuracy"] == pytest.approx(0.5)


def test_simpo_learns_the_preference(tmp_path, data_dir):
    learns_the_preference(tmp_path, data_dir, "simpo", "SimPOModule")
