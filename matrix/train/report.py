"""report.md and PNG plots of a training run, from its metrics.jsonl: loss (training and
validation), learning rate, gradient norm, preference rewards (chosen, rejected, margin) and
accuracy where the objective logs them (DPO, ORPO, SimPO), tokens/s and peak memory.

`TrainingReport` is the Lightning callback that writes them into the train stage folder at
each checkpoint and at the end of training (conf/train_settings.yaml names it as
`train.callbacks.report`; `~train.callbacks.report` turns it off). `write_report(folder)`
writes them from any train folder's metrics.jsonl, finished or not.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from matrix.common.io import atomic_write_text, read_jsonl
from matrix.common.plots import Series, line_chart

log = logging.getLogger(__name__)

REPORT = "report.md"


@dataclass(frozen=True)
class Panel:
    """One PNG: the metrics it draws (training rows as lines, validation rows as points)."""

    file: str
    title: str
    ylabel: str
    metrics: tuple[str, ...]


PANELS = (
    Panel("loss.png", "Loss", "loss", ("train/loss", "val/loss")),
    Panel("lr.png", "Learning rate", "learning rate", ("train/lr",)),
    Panel("grad_norm.png", "Gradient norm (before clipping)", "L2 norm", ("train/grad_norm",)),
    Panel(
        "rewards.png",
        "Preference rewards",
        "reward",
        tuple(
            f"{split}/rewards/{k}"
            for split in ("train", "val")
            for k in ("chosen", "rejected", "margin")
        ),
    ),
    Panel(
        "reward_accuracy.png",
        "Reward accuracy (chosen above rejected)",
        "share of pairs",
        ("train/rewards/accuracy", "val/rewards/accuracy"),
    ),
    Panel("throughput.png", "Throughput", "tokens/s", ("train/tokens_per_s",)),
    Panel(
        "memory.png",
        "Peak memory per step",
        "GiB (GPU: allocated, CPU: resident)",
        ("train/peak_memory_gb",),
    ),
)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def curve(rows: list[dict], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `metric` over the rows that carry it, one value per step (the
    last one logged at that step)."""
    by_step = {int(r["step"]): r[metric] for r in rows if "step" in r and _number(r.get(metric))}
    steps = sorted(by_step)
    return steps, [float(by_step[s]) for s in steps]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def write_report(folder: Path, title: str | None = None) -> Path | None:
    """report.md and the PNGs of the metrics.jsonl in `folder`; None when it has no step rows
    yet. A panel is drawn only for metrics the run logged."""
    metrics = folder / "metrics.jsonl"
    rows = read_jsonl(metrics, torn_tail=True) if metrics.exists() else []
    rows = [r for r in rows if "step" in r]
    if not rows:
        return None
    curves = {m: curve(rows, m) for p in PANELS for m in p.metrics}
    lines = [
        f"# Training report: {title or folder.parent.name + '/' + folder.name}",
        "",
        f"From `metrics.jsonl`: {len(rows)} rows up to optimizer step "
        f"{max(int(r['step']) for r in rows)}. Final value: the metric's last logged value.",
        "",
        "| metric | final | at step | min | max |",
        "|---|---|---|---|---|",
    ]
    for m, (steps, ys) in curves.items():
        if ys:
            lines.append(
                f"| {m} | {_fmt(ys[-1])} | {steps[-1]} | {_fmt(min(ys))} | {_fmt(max(ys))} |"
            )
    for p in PANELS:
        series = [
            Series(m, *curves[m], line=m.startswith("train/")) for m in p.metrics if curves[m][0]
        ]
        if line_chart(series, folder / p.file, title=p.title, ylabel=p.ylabel) is not None:
            lines += ["", f"## {p.title}", "", f"![{p.title}]({p.file})"]
    out = folder / REPORT
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


class TrainingReport(L.Callback):
    """Writes report.md and its PNGs into the train stage folder (the trainer's
    `default_root_dir`) at each checkpoint, at the end of training and after a validation run
    on its own (the final model's, matrix.train.run), on rank 0. A write whose metrics.jsonl
    is unchanged since the last one is skipped."""

    def __init__(self) -> None:
        self._written: tuple[int, int] | None = None

    def refresh(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir)
        metrics = folder / "metrics.jsonl"
        stamp = (metrics.stat().st_size, metrics.stat().st_mtime_ns) if metrics.exists() else None
        if stamp is None or stamp == self._written:
            return
        try:
            write_report(folder)
        except OSError as e:  # a report is a view of metrics.jsonl: never stop training for it
            log.warning("training report not written: %s", e)
            return
        self._written = stamp

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.refresh(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.refresh(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.refresh(trainer)
