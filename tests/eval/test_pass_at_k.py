import itertools
from math import comb

import pytest

from matrix.eval.pass_at_k import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 2), (6, 3, 4), (7, 1, 7), (4, 4, 2)]
)
def test_matches_brute_force_enumeration(n, c, k):
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(flags[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_fraction_correct_and_large_n_is_stable():
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)
    assert 0.0 < pass_at_k(1000, 1, 10) < 1.0
    assert mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)
