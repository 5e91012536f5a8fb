"""AlpacaEval 2 length-controlled (LC) win rate.

Reimplements alpaca_eval's `length_controlled_v1` GLM (metrics/glm_winrate.py). For one model m
against the baseline b, on instruction x:

    logit P(m beats b) = theta_m + phi_m * tanh(std_delta_len) + psi_m * difficulty_x

with std_delta_len = (len(baseline) - len(model)) / std over the model's 805 rows (characters), fitted
by logistic regression on the *soft* judge preferences (each row counted once as a win with weight p
and once as a loss with weight 1 - p), L1 penalty, no free intercept, C picked by 5-fold grouped CV
over 10 log-spaced values in [1e-4, 1e4] on the weighted log loss. LC is the mean predicted win rate
with the length term zeroed: mean_x sigmoid(theta_m + psi_m * difficulty_x).

Upstream also regularises phi and psi with annotations of two "gamed" baselines (verbose and concise
GPT-4-Turbo rewrites, weight lambda/2 = 0.1 each) and takes difficulty_x from a table fitted on the
whole leaderboard. Both live only on Hugging Face. When gamed rows are passed in they are used exactly
as upstream; otherwise their effect is approximated by a Gaussian prior on (phi, psi) centred on the
gamed baselines' published coefficients (`lc_glm_weights.csv`). Difficulty is fitted jointly from the
bundled annotation sets (`fit_instruction_difficulty`). docs/evaluate.md reports how far the result
lands from the published LC numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from matrix.eval.datafiles import read_csv, read_jsonl
from matrix.eval.winrate import preferences_to_unit

BASELINE = "gpt4_1106_preview"
GAMED_BASELINES = ("gpt4_1106_preview_verbose", "gpt4_1106_preview_concise")
BUNDLED_MODELS = (
    "gpt-3.5-turbo-1106",
    "vicuna-7b-v1.5",
    "alpaca-7b",
    "FuseChat-Llama-3.1-8B-Instruct",
)
CS = np.logspace(-4, 4, 10)  # sklearn LogisticRegressionCV's default grid
# Stand-in for the gamed-baseline rows: precision of the prior on (phi, psi). The gamed rows weigh
# 2 * 805 * 0.1 = 161 pseudo-observations; at p(1-p) ~ 0.2 and E[tanh^2] ~ 0.4 that is ~13.
DEFAULT_PRIOR_PRECISION = 13.0
# Ridge on difficulty when fitting it from only a few models: shrinks instructions that every
# model lost (or won) towards the mean instead of letting them run to +-infinity.
DEFAULT_DIFFICULTY_RIDGE = 0.01


@dataclass(frozen=True)
class Pairwise:
    """One model's judged pairs against the baseline, in instruction order."""

    preference: np.ndarray  # P(model wins) in [0, 1]
    len_model: np.ndarray  # characters
    len_baseline: np.ndarray

    def tanh_len(self) -> np.ndarray:
        delta = (self.len_baseline - self.len_model).astype(float)
        sd = delta.std(ddof=1)  # pandas' std, as upstream
        return np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)


@dataclass(frozen=True)
class LengthPrior:
    """Gaussian prior on (phi, psi) standing in for the gamed-baseline rows."""

    mean: tuple[float, float]
    precision: float = DEFAULT_PRIOR_PRECISION


@dataclass(frozen=True)
class GLMFit:
    length_controlled_win_rate: float  # percent
    coefficients: dict[str, float]  # length, difficulty, model (theta)
    C: float
    predicted: np.ndarray = field(repr=False)  # per-instruction P(win) with the length term zeroed


def _weighted_l1_logistic(
    X: np.ndarray,
    p: np.ndarray,
    w: np.ndarray,
    C: float,
    prior_mean: np.ndarray,
    prior_prec: np.ndarray,
) -> np.ndarray:
    """argmin ||b||_1 + C * [sum_i w_i xent(p_i, sigmoid(X_i b)) + 0.5 sum_j prec_j (b_j - mu_j)^2].

    Same objective as liblinear's L1 logistic regression on the duplicated soft-label data; the
    L1 term is handled exactly by splitting b = u - v with u, v >= 0.
    """
    d = X.shape[1]

    def f(uv: np.ndarray) -> tuple[float, np.ndarray]:
        b = uv[:d] - uv[d:]
        z = X @ b
        nll = -(w * (p * log_expit(z) + (1 - p) * log_expit(-z))).sum()
        nll += 0.5 * (prior_prec * (b - prior_mean) ** 2).sum()
        grad_b = C * (X.T @ (w * (expit(z) - p)) + prior_prec * (b - prior_mean))
        return C * nll + uv.sum(), np.concatenate([grad_b + 1.0, -grad_b + 1.0])

    res = minimize(
        f,
        np.zeros(2 * d),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * (2 * d),
        options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 5000},
    )
    return res.x[:d] - res.x[d:]


def _xent(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> float:
    q = np.clip(q, 1e-15, 1 - 1e-15)
    return float(-np.mean(w * (p * np.log(q) + (1 - p) * np.log(1 - q))))


def fit_length_controlled(
    pairs: Pairwise,
    difficulty: np.ndarray,
    *,
    gamed: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
    regularize_to_baseline_lambda: float = 0.2,
    prior: LengthPrior | None = None,
    n_splits: int = 5,
) -> GLMFit:
    """Fit the length-controlled GLM for one model and return its LC win rate.

    `gamed`: optional upstream `df_gamed` rows as (preference in [0,1], std_delta_len, difficulty)
    arrays, one tuple per gamed baseline; they enter with weight lambda/2 and no model term.
    `prior`: used only when no gamed rows are given.
    """
    n = len(pairs.preference)
    if len(difficulty) != n:
        raise ValueError(f"difficulty has {len(difficulty)} rows, annotations have {n}")
    # columns: tanh length term, difficulty, model indicator (theta); "- 1" in the formula = no intercept
    X_model = np.column_stack([pairs.tanh_len(), difficulty, np.ones(n)])
    X, p, w = X_model, pairs.preference, np.ones(n)
    for g_pref, g_std_delta, g_diff in gamed:
        Xg = np.column_stack([np.tanh(g_std_delta), g_diff, np.zeros(len(g_pref))])
        X = np.vstack([X, Xg])
        p = np.concatenate([p, g_pref])
        w = np.concatenate([w, np.full(len(g_pref), regularize_to_baseline_lambda / 2)])
    prior_mean, prior_prec = np.zeros(3), np.zeros(3)
    if prior is not None and not gamed:
        prior_mean[:2] = prior.mean
        prior_prec[:2] = prior.precision

    folds = np.arange(len(p)) % n_splits  # each row (both of its soft-label copies) in one fold
    best_C, best_loss = CS[0], np.inf
    for C in CS:
        losses = []
        for k in range(n_splits):
            tr, te = folds != k, folds == k
            b = _weighted_l1_logistic(X[tr], p[tr], w[tr], C, prior_mean, prior_prec)
            losses.append(_xent(p[te], expit(X[te] @ b), w[te]))
        if np.mean(losses) < best_loss:
            best_C, best_loss = C, float(np.mean(losses))
    b = _weighted_l1_logistic(X, p, w, best_C, prior_mean, prior_prec)
    predicted = expit(X_model[:, 1:] @ b[1:])  # length term set to zero
    return GLMFit(
        length_controlled_win_rate=float(predicted.mean() * 100),
        coefficients={"length": float(b[0]), "difficulty": float(b[1]), "model": float(b[2])},
        C=float(best_C),
        predicted=predicted,
    )


def fit_instruction_difficulty(
    sets: Sequence[Pairwise],
    *,
    ridge: float = DEFAULT_DIFFICULTY_RIDGE,
    prior: LengthPrior | None = None,
) -> np.ndarray:
    """Per-instruction difficulty fitted jointly over several models' annotations.

    logit P(m wins on x) = theta_m + phi_m * tanh_len_{m,x} + gamma_x, with an L2 ridge on gamma
    and (optionally) the same Gaussian prior on phi_m as the per-model GLM, so that length effects
    are not mistaken for difficulty. Returns gamma centred at zero (its offset is absorbed by theta).
    """
    n = len(sets[0].preference)
    if any(len(s.preference) != n for s in sets):
        raise ValueError("all annotation sets must cover the same instructions in the same order")
    m = len(sets)
    tl = [s.tanh_len() for s in sets]
    mu = prior.mean[0] if prior else 0.0
    prec = prior.precision if prior else 0.0

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        th, ph, g = x[:m], x[m : 2 * m], x[2 * m :]
        loss = ridge * (g**2).sum() + 0.5 * prec * ((ph - mu) ** 2).sum()
        g_th, g_ph, g_g = np.zeros(m), prec * (ph - mu), 2 * ridge * g
        for k, s in enumerate(sets):
            z = th[k] + ph[k] * tl[k] + g
            p = s.preference
            loss -= (p * log_expit(z) + (1 - p) * log_expit(-z)).sum()
            r = expit(z) - p
            g_th[k], g_ph[k] = r.sum(), (r * tl[k]).sum()
            g_g = g_g + r
        return loss, np.concatenate([g_th, g_ph, g_g])

    # tight tolerances: the default ftol stops early on this ~800-parameter problem
    opts = {"maxiter": 20000, "ftol": 1e-13, "gtol": 1e-9}
    x = minimize(f, np.zeros(2 * m + n), jac=True, method="L-BFGS-B", options=opts).x
    gamma = x[2 * m :]
    return gamma - gamma.mean()


# --- bundled AlpacaEval data -------------------------------------------------------------------


def load_reference_outputs() -> list[dict]:
    return read_jsonl("alpaca_eval_2/reference_outputs_gpt4_turbo.jsonl.gz")


def load_bundled_annotations(model: str) -> list[dict]:
    """Published weighted_alpaca_eval_gpt4_turbo annotations of `model`, with output_1 re-joined."""
    rows = read_jsonl(f"alpaca_eval_2/annotations/{model}.jsonl.gz")
    for row, ref in zip(rows, load_reference_outputs(), strict=True):
        row["output_1"] = ref["output"]
    return rows


def pairwise_from_annotations(rows: Sequence[dict]) -> Pairwise:
    return Pairwise(
        preference=preferences_to_unit([r["preference"] for r in rows]),
        len_model=np.array([len(r["output_2"]) for r in rows]),
        len_baseline=np.array([len(r["output_1"]) for r in rows]),
    )


def published_glm_weights() -> dict[str, dict[str, float]]:
    """Upstream per-model GLM coefficients (length, difficulty, model)."""
    out = {}
    for row in read_csv("alpaca_eval_2/lc_glm_weights.csv"):
        out[row[""]] = {
            "length": float(row["np.tanh(std_delta_len)"]),
            "difficulty": float(row["instruction_difficulty"]),
            "model": float(row["not_gamed_baseline.astype(float)"]),
        }
    return out


def default_prior(precision: float = DEFAULT_PRIOR_PRECISION) -> LengthPrior:
    """Prior centred on the mean published coefficients of the two gamed baselines."""
    w = published_glm_weights()
    length = float(np.mean([w[g]["length"] for g in GAMED_BASELINES]))
    diff = float(np.mean([w[g]["difficulty"] for g in GAMED_BASELINES]))
    return LengthPrior(mean=(length, diff), precision=precision)


@functools.cache
def bundled_difficulty() -> np.ndarray:
    """Instruction difficulty fitted from the four bundled annotation sets (805 values)."""
    sets = [pairwise_from_annotations(load_bundled_annotations(m)) for m in BUNDLED_MODELS]
    return fit_instruction_difficulty(sets, prior=default_prior())


def length_controlled_win_rate(
    preferences: Sequence[float],
    model_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    difficulty: np.ndarray | None = None,
) -> GLMFit:
    """LC win rate for preferences in [1, 2] on the 805 AlpacaEval instructions (or a subset
    when `difficulty` is given for those rows)."""
    pairs = Pairwise(
        preference=preferences_to_unit(preferences),
        len_model=np.array([len(o) for o in model_outputs]),
        len_baseline=np.array([len(o) for o in baseline_outputs]),
    )
    if difficulty is None:
        difficulty = bundled_difficulty()
    return fit_length_controlled(pairs, difficulty, prior=default_prior())


def published_lc_deviations(leave_one_model_out: bool = False) -> dict[str, dict[str, float]]:
    """Our LC vs the published leaderboard LC for the bundled models (used by tests and docs).

    With `leave_one_model_out`, the difficulty used for a model is fitted without its own
    annotations, which is the situation of a new model under evaluation.
    """
    leaderboard = {r[""]: r for r in read_csv("alpaca_eval_2/leaderboard.csv")}
    sets = {m: pairwise_from_annotations(load_bundled_annotations(m)) for m in BUNDLED_MODELS}
    prior = default_prior()
    out = {}
    for model, pairs in sets.items():
        if leave_one_model_out:
            others = [s for k, s in sets.items() if k != model]
            difficulty = fit_instruction_difficulty(others, prior=prior)
        else:
            difficulty = bundled_difficulty()
        ours = fit_length_controlled(pairs, difficulty, prior=prior).length_controlled_win_rate
        published = float(leaderboard[model]["length_controlled_winrate"])
        out[model] = {"ours": ours, "published": published, "deviation": ours - published}
    return out
