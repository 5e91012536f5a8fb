"""Head-to-head win rates as AlpacaEval reports them.

A preference is a float in [1, 2]: 1 = the baseline is better, 2 = the evaluated model is better,
1.5 = tie (0 is an old encoding of a tie and is read as 1.5). The win rate is mean(preference - 1)
in percent and its standard error is the sample standard error of those per-instruction values,
exactly as alpaca_eval's `AbsoluteScoringRule.describe_head2head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WinRate:
    win_rate: float  # percent
    standard_error: float  # percent
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    discrete_win_rate: float  # percent; each judgment rounded to win / loss / tie

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def preferences_to_unit(preferences: Sequence[float]) -> np.ndarray:
    """Map AlpacaEval preferences in [1, 2] (0 = tie) to P(model wins) in [0, 1]."""
    p = np.asarray(preferences, dtype=float)
    p = np.where(p == 0.0, 1.5, p)
    if np.any(np.isnan(p)) or np.any((p < 1.0) | (p > 2.0)):
        raise ValueError("preferences must lie in [1, 2] (or be 0 for a tie); got values outside")
    return p - 1.0


def win_rate(preferences: Sequence[float]) -> WinRate:
    """Raw (not length-controlled) win rate of the model over the baseline."""
    p = preferences_to_unit(preferences)
    n = len(p)
    if n == 0:
        raise ValueError("win_rate needs at least one preference")
    se = float(p.std(ddof=1) / np.sqrt(n)) * 100 if n > 1 else float("nan")
    # alpaca_eval's ZeroOneScoringRule: an exact tie stays a tie, anything else rounds to 0 or 1
    discrete = np.where(p == 0.5, 0.5, np.round(p))
    return WinRate(
        win_rate=float(p.mean() * 100),
        standard_error=se,
        n_wins=int((p > 0.5).sum()),
        n_wins_base=int((p < 0.5).sum()),
        n_draws=int((p == 0.5).sum()),
        n_total=n,
        discrete_win_rate=float(discrete.mean() * 100),
    )
