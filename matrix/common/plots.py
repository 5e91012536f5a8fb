"""Line charts as PNG files (matplotlib's Agg backend: files only, no display needed), shared by
the train stage's report (one run's curves) and `matrix.compare` (several runs' curves)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402


@dataclass(frozen=True)
class Series:
    """One curve: y over x, drawn as a line with markers, or as markers only (`line=False`,
    for sparse points such as validation passes)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    line: bool = True


def line_chart(
    series: Sequence[Series],
    out: Path,
    *,
    title: str,
    ylabel: str,
    xlabel: str = "optimizer step",
    integer_x: bool = True,
) -> Path | None:
    """Write `series` on one pair of axes to `out` (PNG); None, and no file, when no series
    has a point."""
    series = [s for s in series if len(s.x)]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    # fixed margins: a layout engine would double the time a chart takes to draw
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)
    for s in series:
        ax.plot(
            s.x,
            s.y,
            linestyle="-" if s.line else "none",
            marker="o",
            markersize=3 if s.line else 6,
            label=s.label,
        )
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
