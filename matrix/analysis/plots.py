"""PNG figures of an experiment comparison (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from matrix.analysis.arms import Arm, data_stats, eval_stats  # noqa: E402
from matrix.common.plots import Series, line_chart  # noqa: E402


def plot_training_curves(arms: list[Arm], out: Path) -> Path | None:
    """Each run's training loss over its optimizer steps, on one plot."""
    curves = [
        Series(a.name, [r["step"] for r in a.train_curve], [r["train/loss"] for r in a.train_curve])
        for a in arms
    ]
    return line_chart(curves, out, title="Training loss", ylabel="train loss")


def _grouped_bars(ax, arms: list[Arm], metrics: list[str], values: dict[str, dict]) -> None:
    width = 0.8 / max(len(arms), 1)
    for j, a in enumerate(arms):
        xs, ys, errs = [], [], [[], []]
        for i, m in enumerate(metrics):
            v = values[a.name].get(m)
            if v is None:
                continue
            val, lo, hi = v if isinstance(v, tuple) else (v, v, v)
            xs.append(i + (j - (len(arms) - 1) / 2) * width)
            ys.append(val)
            errs[0].append(max(val - lo, 0.0))
            errs[1].append(max(hi - val, 0.0))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=a.name)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_eval_scores(arms: list[Arm], out: Path) -> Path | None:
    """Every metric that carries a 95% CI (the headline scores), with the CI as error bars."""
    values = {a.name: eval_stats(a) for a in arms}
    metrics = sorted({m for v in values.values() for m, x in v.items() if isinstance(x, tuple)})
    if not metrics:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(metrics)), 4.2))
    _grouped_bars(ax, arms, metrics, values)
    ax.set_title("Evaluation scores (95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_data_diversity(arms: list[Arm], out: Path) -> Path | None:
    """Ratios in [0, 1] of the generated data: distinct-n, embedding spread, coverage."""
    values = {a.name: data_stats(a) for a in arms}
    keep = ("distinct", "spread", "coverage")
    metrics = sorted(
        {
            m
            for v in values.values()
            for m in v
            if not m.startswith(("rows/", "set:")) and any(k in m for k in keep)
        }
    )
    if not metrics:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(metrics)), 4.2))
    _grouped_bars(ax, arms, metrics, values)
    ax.set_ylim(0, 1.05)
    ax.set_title("Generated data: diversity and coverage")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
