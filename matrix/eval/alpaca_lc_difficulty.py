"""Fitting the AlpacaEval 2 length-control table: instruction difficulty and the gamed rows.

Upstream reads the difficulty table and the gamed rows (`instruction_difficulty.csv`,
`df_gamed.csv`) from Hugging Face. They are rebuilt here from public upstream data and shipped as
`data/alpaca_eval_2/length_control_v1.csv` (`scripts/fit_alpaca_difficulty.py` writes it):

- difficulty: per instruction, the value that best explains 45 models' judged preferences given
  those models' published GLM coefficients (`lc_glm_weights.csv`), while the published LC of every
  leaderboard model with coefficients is reproduced and each published fit predicts its model's
  raw win rate, as a fit with a model term must (`fit_instruction_difficulty`);
- gamed rows: the gamed baselines' answer lengths are public (their model outputs), their judge
  preferences are not. The GLM's loss depends on those preferences only through two sums,
  sum p * tanh(std_delta_len) and sum p * difficulty; both are recovered from the stationarity of
  the other models' published fits (`gamed_label_sums`) and the shipped pseudo-preferences have
  exactly those sums.

The per-model GLM that consumes the table: `alpaca_lc_glm`. `alpaca_lc_loo` measures how well a
table fitted without a model reproduces that model's published LC (docs/evaluate.md lists it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from matrix.eval.alpaca_lc_data import (
    BASELINE,
    gamed_std_delta_len,
    load_annotation_sets,
    published_glm_weights,
    published_lc,
)
from matrix.eval.alpaca_lc_glm import (
    REGULARIZE_TO_BASELINE_LAMBDA,
    GamedRows,
    GLMCoefficients,
    LengthControlTable,
    Pairwise,
)

# Difficulty fit, chosen on leave-one-model-out error (docs/evaluate.md):
DEFAULT_DIFFICULTY_RIDGE = 0.01  # L2 on difficulty: instructions every model lost stay finite
DEFAULT_LC_WEIGHT = 100.0  # weight of reproducing the published LC of the leaderboard models
DEFAULT_WIN_RATE_WEIGHT = 10.0  # weight of each published fit reproducing its raw win rate


@dataclass(frozen=True)
class DifficultyFit:
    difficulty: np.ndarray  # 805 values, instruction order
    gamed_label_sums: np.ndarray  # (sum p * tanh(std_delta_len), sum p * difficulty), gamed rows


def fit_instruction_difficulty(
    sets: Mapping[str, Pairwise],
    *,
    weights: Mapping[str, GLMCoefficients] | None = None,
    lc_targets: Mapping[str, float] | None = None,
    gamed_sdl: Mapping[str, np.ndarray] | None = None,
    ridge: float = DEFAULT_DIFFICULTY_RIDGE,
    lc_weight: float = DEFAULT_LC_WEIGHT,
    win_rate_weight: float = DEFAULT_WIN_RATE_WEIGHT,
    init: DifficultyFit | None = None,
) -> DifficultyFit:
    """Per-instruction difficulty d (upstream's scale) from annotation sets with published fits.

    Minimises over d, for the models m of `sets` that have published coefficients
    (phi, psi, theta):

        sum_m sum_x xent(p_mx, sigmoid(theta_m + phi_m tanh_len_mx + psi_m d_x))
        + ridge * |d|^2
        + lc_weight * n * sum_k (mean_x sigmoid(theta_k + psi_k d_x) - LC_k / 100)^2
        + win_rate_weight * sum_m (sum_x sigmoid(theta_m + phi_m tanh_len_mx + psi_m d_x) - p_mx)^2

    where k runs over `lc_targets` (published LC of leaderboard models with coefficients). The
    first term places each instruction; the second pins the table's distribution to the published
    LC numbers; the third is the GLM's score equation for the model term: upstream's fit of m
    predicts m's raw win rate exactly (up to the small L1 term), so with upstream's table the
    published coefficients must too. The gamed rows' label sums then come from the published fits
    (`gamed_label_sums`). L-BFGS with the analytic gradient; `init` warm-starts it (the
    leave-one-out loop starts from the full fit).
    """
    weights = published_glm_weights() if weights is None else weights
    lc_targets = {} if lc_targets is None else lc_targets
    gamed_sdl = gamed_std_delta_len() if gamed_sdl is None else gamed_sdl
    names = [m for m in sets if m in weights and weights[m].difficulty != 0]
    if not names:
        raise ValueError("no annotation set has published GLM coefficients to fit against")
    n = len(sets[names[0]].preference)
    offset = np.array([weights[m].model + weights[m].length * sets[m].tanh_len() for m in names])
    slope = np.array([weights[m].difficulty for m in names])[:, None]
    pref = np.array([sets[m].preference for m in names])
    lc_names = [k for k in lc_targets if k in weights]
    theta = np.array([weights[k].model for k in lc_names])[:, None]
    psi = np.array([weights[k].difficulty for k in lc_names])[:, None]
    target = np.array([lc_targets[k] / 100 for k in lc_names])

    def f(d: np.ndarray) -> tuple[float, np.ndarray]:
        z = offset + slope * d
        q = expit(z)
        r = q - pref
        loss = -(pref * log_expit(z) + (1 - pref) * log_expit(-z)).sum() + ridge * (d**2).sum()
        grad = (slope * r).sum(0) + 2 * ridge * d
        if lc_names:
            ql = expit(theta + psi * d)
            rl = ql.mean(1) - target
            loss += lc_weight * n * (rl**2).sum()
            grad += lc_weight * 2 * (rl[:, None] * psi * ql * (1 - ql)).sum(0)
        r0 = r.sum(1)
        loss += win_rate_weight * (r0**2).sum()
        grad += 2 * win_rate_weight * (r0[:, None] * q * (1 - q) * slope).sum(0)
        return loss, grad

    x0 = np.zeros(n) if init is None else init.difficulty
    res = minimize(
        f, x0, jac=True, method="L-BFGS-B", options={"maxiter": 20000, "ftol": 1e-13, "gtol": 1e-7}
    )
    d = res.x
    return DifficultyFit(d, _gamed_sums_from_fits(names, sets, weights, gamed_sdl, d))


def _gamed_sums_from_fits(names, sets, weights, gamed_sdl, difficulty) -> np.ndarray:
    return gamed_label_sums(
        {m: sets[m] for m in names}, difficulty, weights=weights, gamed_sdl=gamed_sdl
    )


def gamed_label_sums(
    sets: Mapping[str, Pairwise],
    difficulty: np.ndarray,
    *,
    weights: Mapping[str, GLMCoefficients] | None = None,
    gamed_sdl: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """(sum p * tanh(std_delta_len), sum p * difficulty) over the gamed rows, from other fits.

    The gamed rows enter each model's GLM loss only through these two sums of their (unknown)
    preferences. A published fit (phi, psi, theta) is a stationary point of that loss, so its
    length and difficulty gradient components give the sums; the median over models is returned.
    """
    weights = published_glm_weights() if weights is None else weights
    gamed_sdl = gamed_std_delta_len() if gamed_sdl is None else gamed_sdl
    wg = REGULARIZE_TO_BASELINE_LAMBDA / 2
    tg = np.concatenate([np.tanh(v) for v in gamed_sdl.values()])
    dg = np.concatenate([difficulty] * len(gamed_sdl))
    sums = []
    for m, s in sets.items():
        c = weights.get(m)
        if c is None or (c.length == 0 and c.difficulty == 0):
            continue
        tl = s.tanh_len()
        r = expit(c.model + c.length * tl + c.difficulty * difficulty) - s.preference
        own = np.array([(r * tl).sum(), (r * difficulty).sum()])
        qg = expit(c.length * tg + c.difficulty * dg)
        sums.append(np.array([(qg * tg).sum(), (qg * dg).sum()]) + own / wg)
    return np.median(np.array(sums), axis=0)


def gamed_rows(
    difficulty: np.ndarray,
    label_sums: np.ndarray,
    *,
    weights: Mapping[str, GLMCoefficients] | None = None,
    gamed_sdl: Mapping[str, np.ndarray] | None = None,
) -> tuple[GamedRows, ...]:
    """Pseudo gamed rows: each gamed baseline's own published GLM prediction (without its model
    term, as in df_gamed), shifted along (tanh_len, difficulty) so the label sums equal
    `label_sums`. Only those sums affect the final fit; the rows' spread matters only for CV."""
    weights = published_glm_weights() if weights is None else weights
    gamed_sdl = gamed_std_delta_len() if gamed_sdl is None else gamed_sdl
    names = list(gamed_sdl)
    tg = np.concatenate([np.tanh(gamed_sdl[g]) for g in names])
    dg = np.concatenate([difficulty] * len(names))
    p0 = np.concatenate(
        [
            expit(weights[g].length * np.tanh(gamed_sdl[g]) + weights[g].difficulty * difficulty)
            for g in names
        ]
    )
    M = np.column_stack([tg, dg])
    shift = np.linalg.solve(M.T @ M, label_sums - M.T @ p0)
    p = p0 + M @ shift
    n = len(difficulty)
    return tuple(
        GamedRows(p[i * n : (i + 1) * n], gamed_sdl[g], difficulty) for i, g in enumerate(names)
    )


def fit_length_control_table(
    sets: Mapping[str, Pairwise] | None = None,
    *,
    exclude: Sequence[str] = (),
    ridge: float = DEFAULT_DIFFICULTY_RIDGE,
    lc_weight: float = DEFAULT_LC_WEIGHT,
    win_rate_weight: float = DEFAULT_WIN_RATE_WEIGHT,
    init: DifficultyFit | None = None,
) -> tuple[LengthControlTable, DifficultyFit]:
    """Difficulty and gamed rows from the annotation sets and the published leaderboard, leaving
    out the models in `exclude` everywhere (their annotations, coefficients and LC)."""
    sets = load_annotation_sets() if sets is None else sets
    weights = {m: c for m, c in published_glm_weights().items() if m not in exclude}
    train = {m: s for m, s in sets.items() if m not in exclude}
    targets = {
        m: lc
        for m in weights
        if m != BASELINE and (lc := published_lc(m)) is not None and m not in exclude
    }
    fit = fit_instruction_difficulty(
        train,
        weights=weights,
        lc_targets=targets,
        ridge=ridge,
        lc_weight=lc_weight,
        win_rate_weight=win_rate_weight,
        init=init,
    )
    table = LengthControlTable(
        fit.difficulty, gamed_rows(fit.difficulty, fit.gamed_label_sums, weights=weights)
    )
    return table, fit
