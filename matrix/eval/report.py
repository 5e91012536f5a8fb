"""report.md and PNG plots for an evaluate stage dir, and side-by-side comparison of two runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from matrix.common.io import atomic_write_text  # noqa: E402
from matrix.core.model_card import Score  # noqa: E402

# the headline metric of each benchmark and the key of its 95% interval
HEADLINE = {
    "alpaca_eval2": ("win_rate", "win_rate_ci95"),
    "arena_hard": ("score", "score_ci95"),
    "mt_bench": ("score", "score_ci95"),
    "mt_bench_101": ("score", None),
    "humaneval": ("pass@1", None),
    "mbpp": ("pass@1", None),
    "safety": ("asr_keyword", None),  # keyword attack success rate, either protocol
    "custom": ("score", "score_ci95"),  # win rate vs the baseline, or the mean 1-10 rating
}

# metrics listed beside the headline in the report's first table (the paper's table columns)
BESIDE = {
    "mt_bench_101": ("ability/perceptivity", "ability/interactivity", "ability/adaptability"),
    "safety": ("helpfulness", "harmlessness"),
}


def headline_scores(scores: dict[str, dict]) -> list[Score]:
    """Each benchmark's headline metric with its 95% interval and item count, for the model
    card of the folder evaluated (matrix.core.model_card)."""
    out = []
    for b, s in scores.items():
        metric, ci = HEADLINE.get(b, (None, None))
        if metric in s and isinstance(s[metric], int | float):
            interval = s.get(ci) if ci else None
            n = s.get("n", s.get("n_advbench"))
            out.append(Score(b, metric, float(s[metric]), interval, int(n) if n else None))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.2f}, {v[1]:.2f}]"
    return str(v)


def plot_scores(scores: dict[str, dict], path: Path) -> None:
    names = [b for b in scores if b in HEADLINE and HEADLINE[b][0] in scores[b]]
    fig, ax = plt.subplots(figsize=(1.6 * max(len(names), 2) + 2, 3.5))
    for k, b in enumerate(names):
        metric, ci = HEADLINE[b]
        v = scores[b][metric]
        lo, hi = scores[b].get(ci, [v, v]) if ci else (v, v)
        ax.errorbar([k], [v], yerr=[[v - lo], [hi - v]], fmt="o", capsize=4)
    ax.set_xticks(range(len(names)), [f"{b}\n{HEADLINE[b][0]}" for b in names], fontsize=8)
    ax.set_ylabel("score (95% CI where available)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_winrate_vs_length(points: list[tuple[int, float]], path: Path, bins: int = 5) -> None:
    """Win rate per answer-length quantile bin: how much the judge rewards length."""
    lengths = np.array([p[0] for p in points], dtype=float)
    wins = np.array([p[1] for p in points], dtype=float)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)
    centers, rates, errs = [], [], []
    for b in range(len(edges) - 1):
        w = wins[idx == b]
        if len(w):
            centers.append(lengths[idx == b].mean())
            rates.append(100 * w.mean())
            errs.append(196 * w.std(ddof=1) / np.sqrt(len(w)) if len(w) > 1 else 0.0)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(centers, rates, yerr=errs, fmt="o-", capsize=3)
    ax.set_xlabel("answer length (characters, bin mean)")
    ax.set_ylabel("win rate vs reference (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out_dir: Path, model_name: str, judge_name: str, scores: dict[str, dict]) -> str:
    lines = [f"# Evaluation report: {model_name}", "", f"Judge: `{judge_name}`", ""]
    lines += ["| benchmark | metric | value | 95% CI |", "|---|---|---|---|"]
    for b, s in scores.items():
        metric, ci = HEADLINE.get(b, (None, None))
        if metric in s:
            lines.append(
                f"| {b} | {metric} | {_fmt(s[metric])} | {_fmt(s.get(ci, '')) if ci else ''} |"
            )
        lines += [f"| {b} | {m} | {_fmt(s[m])} | |" for m in BESIDE.get(b, ()) if m in s]
    for b, s in scores.items():
        lines += ["", f"## {b}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in s.items()]
    lines += ["", "![scores](scores.png)"]
    for bench in scores:
        if (out_dir / f"{bench}_winrate_vs_length.png").exists():
            lines += ["", f"![{bench}: win rate vs length]({bench}_winrate_vs_length.png)"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "report.md", text)
    return text


def _interval(s: dict, metric: str, ci: str | None) -> tuple[float, float] | None:
    if ci and ci in s:
        return tuple(s[ci])
    se = s.get(f"{metric}_se")
    if se is not None:
        return (s[metric] - 1.96 * se, s[metric] + 1.96 * se)
    return None


def compare(
    a: dict[str, dict], b: dict[str, dict], names: tuple[str, str]
) -> tuple[str, list[dict]]:
    """Side-by-side headline metrics; a difference is marked significant when the 95% intervals
    do not overlap (conservative: non-overlap implies p < 0.05, not the converse)."""
    rows = []
    lines = [
        f"| benchmark | metric | {names[0]} | {names[1]} | diff | significant |",
        "|---|---|---|---|---|---|",
    ]
    for bench in sorted(set(a) & set(b)):
        metric, ci = HEADLINE.get(bench, (None, None))
        if metric not in a[bench] or metric not in b[bench]:
            continue
        ia, ib = _interval(a[bench], metric, ci), _interval(b[bench], metric, ci)
        sig = None if ia is None or ib is None else (ia[1] < ib[0] or ib[1] < ia[0])
        va, vb = a[bench][metric], b[bench][metric]
        rows.append(
            {
                "benchmark": bench,
                "metric": metric,
                "a": va,
                "b": vb,
                "diff": vb - va,
                "a_ci95": ia,
                "b_ci95": ib,
                "significant": sig,
            }
        )
        mark = {True: "yes", False: "no", None: "n/a (no CI)"}[sig]
        lines.append(
            f"| {bench} | {metric} | {_fmt(va)} {_fmt(list(ia)) if ia else ''} | "
            f"{_fmt(vb)} {_fmt(list(ib)) if ib else ''} | {vb - va:+.2f} | {mark} |"
        )
    return "\n".join(lines) + "\n", rows
