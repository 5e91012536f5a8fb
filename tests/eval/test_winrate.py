import math

import pytest

from matrix.eval.alpaca_lc_data import BUNDLED_MODELS, load_bundled_annotations
from matrix.eval.datafiles import read_csv
from matrix.eval.winrate import win_rate


@pytest.mark.parametrize("model", BUNDLED_MODELS)
def test_raw_win_rate_matches_published_leaderboard(model):
    row = {r[""]: r for r in read_csv("alpaca_eval_2/leaderboard.csv")}[model]
    wr = win_rate([r["preference"] for r in load_bundled_annotations(model)])
    assert wr.win_rate == pytest.approx(float(row["win_rate"]), abs=1e-9)
    assert wr.standard_error == pytest.approx(float(row["standard_error"]), abs=1e-9)
    assert wr.n_wins == int(row["n_wins"]) and wr.n_wins_base == int(row["n_wins_base"])
    assert wr.discrete_win_rate == pytest.approx(float(row["discrete_win_rate"]), abs=1e-9)


def test_ties_count_half_and_zero_means_tie():
    wr = win_rate([2.0, 1.0, 1.5, 0])
    assert wr.win_rate == pytest.approx(50.0)
    assert wr.n_draws == 2 and wr.n_total == 4


def test_out_of_range_preference_rejected():
    with pytest.raises(ValueError):
        win_rate([2.5])
    assert math.isnan(win_rate([2.0]).standard_error)
