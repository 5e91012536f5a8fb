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

docs/evaluate.md lists the leave-one-model-out deviation from the published LC for every set.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from matrix.eval.datafiles import DATA_DIR, iter_jsonl, read_csv, read_jsonl
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
REGULARIZE_TO_BASELINE_LAMBDA = 0.2  # upstream: each gamed baseline's rows weigh lambda / 2
# Difficulty fit, chosen on leave-one-model-out error (docs/evaluate.md):
DEFAULT_DIFFICULTY_RIDGE = 0.01  # L2 on difficulty: instructions every model lost stay finite
DEFAULT_LC_WEIGHT = 100.0  # weight of reproducing the published LC of the leaderboard models
DEFAULT_WIN_RATE_WEIGHT = 10.0  # weight of each published fit reproducing its raw win rate
TABLE_FILE = "alpaca_eval_2/length_control_v1.csv"
SLIM_DIR = "alpaca_eval_2/annotations_slim"


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


# --- public upstream data ----------------------------------------------------------------------


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


@functools.cache
def load_annotation_sets(directory: str | None = None) -> dict[str, Pairwise]:
    """The slim upstream annotation sets (preference and both lengths per instruction), by model."""
    root = Path(directory) if directory else DATA_DIR / SLIM_DIR
    out = {}
    for path in sorted(root.glob("*.jsonl.gz")):
        rows = list(iter_jsonl(path))
        if [r["index"] for r in rows] != list(range(len(rows))):
            raise ValueError(f"{path}: rows must list the instructions 0..n-1 in order")
        out[path.name.removesuffix(".jsonl.gz")] = Pairwise(
            preference=preferences_to_unit([r["preference"] for r in rows]),
            len_model=np.array([r["len_output_2"] for r in rows]),
            len_baseline=np.array([r["len_output_1"] for r in rows]),
        )
    if not out:
        raise FileNotFoundError(f"no *.jsonl.gz annotation sets in {root}")
    return out


@functools.cache
def published_glm_weights() -> dict[str, GLMCoefficients]:
    """Upstream per-model GLM coefficients (length, difficulty, model)."""
    return {
        row[""]: GLMCoefficients(
            length=float(row["np.tanh(std_delta_len)"]),
            difficulty=float(row["instruction_difficulty"]),
            model=float(row["not_gamed_baseline.astype(float)"]),
        )
        for row in read_csv("alpaca_eval_2/lc_glm_weights.csv")
    }


@functools.cache
def leaderboard() -> dict[str, dict[str, str]]:
    return {r[""]: r for r in read_csv("alpaca_eval_2/leaderboard.csv")}


def published_lc(model: str) -> float | None:
    value = leaderboard().get(model, {}).get("length_controlled_winrate", "")
    return float(value) if value else None


@functools.cache
def gamed_std_delta_len() -> dict[str, np.ndarray]:
    """std_delta_len of each gamed baseline against the baseline (from their public outputs)."""
    rows = read_csv("alpaca_eval_2/gamed_baseline_lengths.csv")
    ref = np.array([len(r["output"]) for r in load_reference_outputs()], dtype=float)
    out = {}
    for name in GAMED_BASELINES:
        pair = Pairwise(np.zeros(len(rows)), np.array([int(r[name]) for r in rows]), ref)
        out[name] = pair.std_delta_len()
    return out


# --- fitting the difficulty table and the gamed rows -------------------------------------------


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


# --- the shipped table ---------------------------------------------------------------------------


def table_to_csv(table: LengthControlTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["index", "instruction_difficulty"]
    for g in GAMED_BASELINES:
        header += [f"{g}_std_delta_len", f"{g}_preference"]
    w.writerow(header)
    for i, d in enumerate(table.difficulty):
        row = [i, f"{d:.10f}"]
        for g in table.gamed:
            row += [f"{g.std_delta_len[i]:.10f}", f"{g.preference[i]:.10f}"]
        w.writerow(row)
    return buf.getvalue()


@functools.cache
def bundled_table() -> LengthControlTable:
    """The shipped difficulty table and gamed rows (`scripts/fit_alpaca_difficulty.py`)."""
    rows = read_csv(TABLE_FILE)
    d = np.array([float(r["instruction_difficulty"]) for r in rows])
    gamed = tuple(
        GamedRows(
            np.array([float(r[f"{g}_preference"]) for r in rows]),
            np.array([float(r[f"{g}_std_delta_len"]) for r in rows]),
            d,
        )
        for g in GAMED_BASELINES
    )
    return LengthControlTable(d, gamed)


def bundled_difficulty() -> np.ndarray:
    """Instruction difficulty, 805 values in instruction order (the shipped table)."""
    return bundled_table().difficulty


def length_controlled_win_rate(
    preferences: Sequence[float],
    model_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    rows: Sequence[int] | None = None,
    table: LengthControlTable | None = None,
) -> GLMFit:
    """LC win rate for preferences in [1, 2] on the AlpacaEval instructions `rows` (all 805 by
    default), with the shipped table unless `table` is given."""
    pairs = Pairwise(
        preference=preferences_to_unit(preferences),
        len_model=np.array([len(o) for o in model_outputs]),
        len_baseline=np.array([len(o) for o in baseline_outputs]),
    )
    table = bundled_table() if table is None else table
    if rows is not None:
        table = table.subset(np.asarray(rows))
    return fit_length_controlled(pairs, table.difficulty, gamed=table.gamed)


# --- agreement with the published leaderboard ---------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    model: str
    published: float
    ours: float
    avg_length: float
    in_range: bool  # average answer length within a factor of two of the baseline's

    @property
    def deviation(self) -> float:
        return self.ours - self.published


def evaluable_models(sets: Mapping[str, Pairwise] | None = None) -> list[str]:
    """Sets with a published LC, the baseline itself excluded (its LC is 50 by construction)."""
    sets = load_annotation_sets() if sets is None else sets
    return [m for m in sets if m != BASELINE and published_lc(m) is not None]


def leave_one_out_deviations(
    models: Sequence[str] | None = None, **fit_kwargs: float
) -> list[Deviation]:
    """For each model: fit the table without it (annotations, coefficients and LC), fit its GLM,
    compare its LC with the published one. A new model's situation. `fit_kwargs` go to
    `fit_length_control_table` (ridge, lc_weight, win_rate_weight)."""
    sets = load_annotation_sets()
    _, full = fit_length_control_table(sets, **fit_kwargs)
    base_len = float(leaderboard()[BASELINE]["avg_length"])
    out = []
    for m in evaluable_models(sets) if models is None else models:
        table, _ = fit_length_control_table(sets, exclude=[m], init=full, **fit_kwargs)
        ours = fit_length_controlled(sets[m], table.difficulty, gamed=table.gamed)
        avg_len = float(leaderboard()[m]["avg_length"])
        out.append(
            Deviation(
                model=m,
                published=float(published_lc(m)),
                ours=ours.length_controlled_win_rate,
                avg_length=avg_len,
                in_range=base_len / 2 <= avg_len <= 2 * base_len,
            )
        )
    return out
