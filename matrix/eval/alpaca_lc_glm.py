"""AlpacaEval 2 length-controlled (LC) win rate.

Reimplements alpaca_eval's `length_controlled_v1` GLM (metrics/glm_winrate.py). For one model m
against the baseline b, on instruction x:

    logit P(m beats b) = theta_m + phi_m * tanh(std_delta_len) + psi_m * difficulty_x

with std_delta_len = (len(baseline) - len(model)) / std over the model's rows (characters), fitted
by logistic regression on the *soft* judge preferences (each row counted once as a win with weight p
and once as a loss with weight 1 - p), L1 penalty, no free intercept, C picked by 5-fold grouped CV
over 10 log-spaced values in [1e-4, 1e4] on the weighted log loss. Rows of two "gamed" baselines
(verbose and concise GPT-4-Turbo rewrites, no model term, weight 0.1 each) regularise phi and psi.
LC is the mean predicted win rate with the length term zeroed: mean_x sigmoid(theta_m + psi_m d_x).

The per-instruction difficulty and the gamed rows are not computed here: `alpaca_lc_difficulty`
rebuilds them from public upstream data and `alpaca_lc_table` reads the shipped table. Modules:
`alpaca_lc_data` (shipped upstream inputs), `alpaca_lc_difficulty` (fitting the table),
`alpaca_lc_table` (the shipped table, LC of a run), `alpaca_lc_loo` (agreement with the
leaderboard).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

CS = np.logspace(-4, 4, 10)  # sklearn LogisticRegressionCV's default grid
REGULARIZE_TO_BASELINE_LAMBDA = 0.2  # upstream: each gamed baseline's rows weigh lambda / 2


@dataclass(frozen=True)
class Pairwise:
    """One model's judged pairs against the baseline, in instruction order."""

    preference: np.ndarray  # P(model wins) in [0, 1]
    len_model: np.ndarray  # characters
    len_baseline: np.ndarray

    def std_delta_len(self) -> np.ndarray:
        delta = (self.len_baseline - self.len_model).astype(float)
        sd = delta.std(ddof=1)  # pandas' std, as upstream
        return delta / sd if sd > 0 else np.zeros_like(delta)

    def tanh_len(self) -> np.ndarray:
        return np.tanh(self.std_delta_len())


@dataclass(frozen=True)
class GamedRows:
    """One gamed baseline's rows of upstream's `df_gamed` (no model term in the GLM)."""

    preference: np.ndarray  # in [0, 1]
    std_delta_len: np.ndarray
    difficulty: np.ndarray


@dataclass(frozen=True)
class LengthControlTable:
    """What the per-model GLM needs besides the model's own annotations."""

    difficulty: np.ndarray  # 805 values, instruction order
    gamed: tuple[GamedRows, ...]

    def subset(self, rows: np.ndarray) -> LengthControlTable:
        """The table restricted to some instructions (a `limit`ed run)."""
        return LengthControlTable(
            self.difficulty[rows],
            tuple(
                GamedRows(g.preference[rows], g.std_delta_len[rows], g.difficulty[rows])
                for g in self.gamed
            ),
        )


@dataclass(frozen=True)
class GLMCoefficients:
    length: float  # phi
    difficulty: float  # psi
    model: float  # theta

    def lc(self, difficulty: np.ndarray) -> float:
        """LC win rate (percent) these coefficients give with the length term zeroed."""
        return float(expit(self.model + self.difficulty * difficulty).mean() * 100)


@dataclass(frozen=True)
class GLMFit:
    length_controlled_win_rate: float  # percent
    coefficients: dict[str, float]  # length, difficulty, model (theta)
    C: float
    predicted: np.ndarray = field(repr=False)  # per-instruction P(win) with the length term zeroed


# --- the per-model GLM (upstream's fit_LogisticRegressionCV) -------------------------------------


def _weighted_l1_logistic(
    X: np.ndarray, p: np.ndarray, w: np.ndarray, C: float, x0: np.ndarray | None = None
) -> np.ndarray:
    """argmin ||b||_1 + C * sum_i w_i xent(p_i, sigmoid(X_i b)); returns the split (u, v), b = u - v.

    Same objective as liblinear's L1 logistic regression on the duplicated soft-label data; the
    L1 term is handled exactly by splitting b = u - v with u, v >= 0 (scipy's bounded L-BFGS).
    Hand-written because sklearn's liblinear has no warm start and sklearn is not a dependency.
    """
    d = X.shape[1]

    def f(uv: np.ndarray) -> tuple[float, np.ndarray]:
        b = uv[:d] - uv[d:]
        z = X @ b
        nll = -(w * (p * log_expit(z) + (1 - p) * log_expit(-z))).sum()
        grad_b = C * (X.T @ (w * (expit(z) - p)))
        return C * nll + uv.sum(), np.concatenate([grad_b + 1.0, -grad_b + 1.0])

    res = minimize(
        f,
        np.zeros(2 * d) if x0 is None else x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * (2 * d),
        options={"ftol": 1e-12, "gtol": 1e-8, "maxiter": 5000},
    )
    return res.x


def _xent(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> float:
    q = np.clip(q, 1e-15, 1 - 1e-15)
    return float(-np.mean(w * (p * np.log(q) + (1 - p) * np.log(1 - q))))


def fit_length_controlled(
    pairs: Pairwise,
    difficulty: np.ndarray,
    *,
    gamed: Sequence[GamedRows] = (),
    regularize_to_baseline_lambda: float = REGULARIZE_TO_BASELINE_LAMBDA,
    n_splits: int = 5,
) -> GLMFit:
    """Fit the length-controlled GLM for one model and return its LC win rate.

    `gamed`: upstream `df_gamed` rows, one `GamedRows` per gamed baseline; they enter with weight
    lambda/2 and no model term. Without them this is upstream's `length_controlled_noreg`.
    """
    n = len(pairs.preference)
    if len(difficulty) != n:
        raise ValueError(f"difficulty has {len(difficulty)} rows, annotations have {n}")
    # columns: tanh length term, difficulty, model indicator (theta); "- 1" in the formula = no intercept
    X_model = np.column_stack([pairs.tanh_len(), difficulty, np.ones(n)])
    X, p, w = X_model, pairs.preference, np.ones(n)
    for g in gamed:
        Xg = np.column_stack([np.tanh(g.std_delta_len), g.difficulty, np.zeros(len(g.preference))])
        X = np.vstack([X, Xg])
        p = np.concatenate([p, g.preference])
        w = np.concatenate([w, np.full(len(g.preference), regularize_to_baseline_lambda / 2)])

    folds = np.arange(len(p)) % n_splits  # each row (both of its soft-label copies) in one fold
    losses = np.zeros((len(CS), n_splits))
    for k in range(n_splits):
        tr, te = folds != k, folds == k
        uv = None
        for j, C in enumerate(CS):  # warm start along the C path
            uv = _weighted_l1_logistic(X[tr], p[tr], w[tr], C, uv)
            b = uv[:3] - uv[3:]
            losses[j, k] = _xent(p[te], expit(X[te] @ b), w[te])
    best = int(np.argmin(losses.mean(axis=1)))
    uv = _weighted_l1_logistic(X, p, w, CS[best])
    b = uv[:3] - uv[3:]
    predicted = expit(X_model[:, 1:] @ b[1:])  # length term set to zero
    return GLMFit(
        length_controlled_win_rate=float(predicted.mean() * 100),
        coefficients={"length": float(b[0]), "difficulty": float(b[1]), "model": float(b[2])},
        C=float(CS[best]),
        predicted=predicted,
    )
