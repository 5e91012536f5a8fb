"""The figures of `python -m matrix.analyze` (matplotlib, Agg: files only): each takes one
series per run, so several runs are drawn side by side or overlaid on the same axes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from matrix.analysis.instruction_judge import CATEGORIES, DIFFICULTY, QUALITY  # noqa: E402


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _scale_bars(ax, runs: dict[str, list[int]], labels: Sequence[str], title: str) -> None:
    """Share of each run's instructions at each level 1-5, bars side by side per level."""
    width = 0.8 / max(len(runs), 1)
    for j, (name, values) in enumerate(runs.items()):
        counts = Counter(values)
        n = max(len(values), 1)
        xs = np.arange(1, 6) + (j - (len(runs) - 1) / 2) * width
        label = f"{name} ({len(values)} tagged)"
        ax.bar(xs, [100 * counts.get(k, 0) / n for k in range(1, 6)], width, label=label)
    ax.set_xticks(range(1, 6))
    ax.set_xticklabels([f"{i}\n{w}" for i, w in enumerate(labels, 1)], fontsize=8)
    ax.set_ylabel("% of judged instructions")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def quality_difficulty(
    quality: dict[str, list[int]], difficulty: dict[str, list[int]], out: Path
) -> Path:
    """Fig. 5: the judge's quality and difficulty of the instructions, one bar colour per run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    _scale_bars(a, quality, QUALITY, "Instruction quality")
    _scale_bars(b, difficulty, DIFFICULTY, "Instruction difficulty")
    return _save(fig, out)


def profile_similarity(
    pairs: dict[str, tuple[list[float], list[float]]], heatmap: np.ndarray | None, out: Path
) -> Path:
    """Fig. 6: per run, step histograms of the cosine similarity of agent pairs in the same
    group and in different groups; beside it the first run's agents x agents heatmap."""
    fig, axes = plt.subplots(1, 2 if heatmap is not None else 1, figsize=(11, 4), squeeze=False)
    ax = axes[0][0]
    bins = np.linspace(-0.2, 1.0, 49)
    for k, (name, (same, other)) in enumerate(pairs.items()):
        color = f"C{k}"
        tag = f"{name}: " if len(pairs) > 1 else ""
        if other:
            ax.hist(
                other,
                bins,
                histtype="step",
                density=True,
                color=color,
                ls="-",
                label=f"{tag}different groups ({len(other)} pairs)",
            )
        if same:
            ax.hist(
                same,
                bins,
                histtype="step",
                density=True,
                color=color,
                ls="--",
                label=f"{tag}same group ({len(same)} pairs)",
            )
    ax.set_xlabel("cosine similarity of the two agents' profile embeddings")
    ax.set_ylabel("density")
    ax.set_title("Inter-agent profile similarity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if heatmap is not None:
        hm = axes[0][1]
        im = hm.imshow(heatmap, vmin=-0.2, vmax=1.0, cmap="viridis", interpolation="nearest")
        hm.set_title(f"{next(iter(pairs))}: agents ordered by group")
        hm.set_xlabel("agent")
        hm.set_ylabel("agent")
        fig.colorbar(im, ax=hm, fraction=0.046)
    return _save(fig, out)


def _sunburst(ax, verb_nouns: list[tuple[str, str]], title: str, top_verbs: int, top_nouns: int):
    """Self-Instruct's chart: the top root verbs (inner ring) and each one's top direct-object
    nouns (outer ring), sized by instruction count; the rest of a verb's nouns is left blank."""
    pairs = [(v, n) for v, n in verb_nouns if v]
    verbs = Counter(v for v, _ in pairs).most_common(top_verbs)
    if not verbs:
        ax.text(0.5, 0.5, "no verbs", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title)
        return
    inner, inner_labels, outer, outer_labels, outer_colors = [], [], [], [], []
    cmap = plt.get_cmap("tab20")
    for i, (verb, count) in enumerate(verbs):
        inner.append(count)
        inner_labels.append(verb)
        nouns = Counter(n for v, n in pairs if v == verb and n).most_common(top_nouns)
        for noun, c in nouns:
            outer.append(c)
            outer_labels.append(noun)
            outer_colors.append(cmap(i % 20))
        rest = count - sum(c for _, c in nouns)
        if rest:
            outer.append(rest)
            outer_labels.append("")
            outer_colors.append((1, 1, 1, 0))
    ax.pie(
        inner,
        labels=inner_labels,
        radius=0.6,
        colors=[cmap(i % 20) for i in range(len(inner))],
        labeldistance=0.45,
        textprops={"fontsize": 7},
        wedgeprops={"width": 0.6, "edgecolor": "w"},
    )
    ax.pie(
        outer,
        labels=outer_labels,
        radius=1.0,
        colors=outer_colors,
        labeldistance=0.82,
        textprops={"fontsize": 6},
        wedgeprops={"width": 0.4, "edgecolor": "w", "alpha": 0.6},
    )
    ax.set_title(title, fontsize=9)


def verbs_and_categories(
    verb_nouns: dict[str, list[tuple[str, str]]],
    categories: dict[str, list[str]],
    out: Path,
    top_verbs: int = 20,
    top_nouns: int = 4,
) -> Path:
    """Fig. 7: the task categories of each run (bars side by side), then one verb-noun
    sunburst per run."""
    n = len(verb_nouns)
    fig = plt.figure(figsize=(max(11, 5 * n), 9))
    grid = fig.add_gridspec(2, n, height_ratios=[1, 1.6])
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / max(n, 1)
    for j, (name, cats) in enumerate(categories.items()):
        counts = Counter(cats)
        total = max(len(cats), 1)
        xs = np.arange(len(CATEGORIES)) + (j - (n - 1) / 2) * width
        ax.bar(xs, [100 * counts.get(c, 0) / total for c in CATEGORIES], width, label=name)
    ax.set_xticks(range(len(CATEGORIES)))
    ax.set_xticklabels(CATEGORIES, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("% of judged instructions")
    ax.set_title("Task categories")
    ax.grid(axis="y", alpha=0.3)
    if n > 1:
        ax.legend(fontsize=8)
    for j, (name, vn) in enumerate(verb_nouns.items()):
        _sunburst(
            fig.add_subplot(grid[1, j]),
            vn,
            f"{name}: root verbs and their objects",
            top_verbs,
            top_nouns,
        )
    return _save(fig, out)


def lengths(words: dict[str, list[int]], out: Path) -> Path:
    """Instruction length in words, one step histogram per run."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    top = max((max(v) for v in words.values() if v), default=1)
    bins = np.linspace(0, top + 1, min(40, top + 2))
    for name, v in words.items():
        ax.hist(v, bins, histtype="step", density=True, label=name, lw=1.5)
    ax.set_xlabel("instruction length (words)")
    ax.set_ylabel("density")
    ax.set_title("Instruction length")
    ax.grid(alpha=0.3)
    if len(words) > 1:
        ax.legend(fontsize=8)
    return _save(fig, out)
