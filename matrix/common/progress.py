"""Progress on every long wait: rich bars in a terminal, plain lines in a log.

`progress(stage)` returns a `rich.progress.Progress`; callers add tasks and update them as
usual. Where it is drawn:
- stderr is a terminal: bars with counts, percent, rate, ETA and the task's `info` field
  (training puts its loss and learning rate there);
- stderr is not a terminal (a log file, CI, a pipe): no bars but one plain line per task at
  its start, each time it crosses a tenth of its total once it has run for
  `MATRIX_PROGRESS_QUIET_S` seconds (default 2: a task done sooner gets no line between its
  first and its last), at least every
  `MATRIX_PROGRESS_INTERVAL` seconds (default 30) while it moves, and when it is done, e.g.
  ``[evaluate] judging alpaca_eval2: 120/805 (15%) 3.2 it/s ETA 3m28s``. The lines go to
  the `matrix.progress` logger, so they land wherever the stage's log lines do;
- nowhere on ranks other than zero (`LOCAL_RANK`/`RANK`), nor with `MATRIX_NO_PROGRESS=1`.
`MATRIX_PROGRESS=bars|lines` forces either form.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

log = logging.getLogger("matrix.progress")

T = TypeVar("T")
DEFAULT_INTERVAL_S = 30.0
DEFAULT_QUIET_S = 2.0


def progress(stage: str) -> Progress:
    """The progress display of one stage (its name prefixes the plain lines)."""
    if _quiet():
        return Progress(disable=True)
    mode = os.environ.get("MATRIX_PROGRESS", "")
    console = Console(stderr=True)
    if mode == "bars" or (mode != "lines" and console.is_terminal):
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(),
            TimeRemainingColumn(),
            InfoColumn(),
            console=console,
        )
    interval = float(os.environ.get("MATRIX_PROGRESS_INTERVAL") or DEFAULT_INTERVAL_S)
    quiet = float(os.environ.get("MATRIX_PROGRESS_QUIET_S") or DEFAULT_QUIET_S)
    return LineProgress(stage, interval, quiet)


def track(
    items: Iterable[T], description: str, stage: str, total: int | None = None
) -> Iterator[T]:
    """`items`, reporting each one done under `description` (counts from len(items))."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(stage) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _quiet() -> bool:
    rank = os.environ.get("LOCAL_RANK") or os.environ.get("RANK") or "0"
    return rank != "0" or os.environ.get("MATRIX_NO_PROGRESS") == "1"


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "? it/s", style="cyan")


class InfoColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


@dataclass
class _Mark:
    """Where a task started (its own rate excludes work done before it, e.g. on resume)
    and what its last line said."""

    start_time: float
    start_completed: float
    last_time: float
    last_tenth: int
    ended: bool = False


class LineProgress(Progress):
    """A `Progress` that draws nothing and logs plain lines instead (see the module doc)."""

    def __init__(
        self, stage: str, interval_s: float = DEFAULT_INTERVAL_S, quiet_s: float = DEFAULT_QUIET_S
    ):
        super().__init__(disable=True)
        self.stage = stage
        self.interval_s = interval_s
        self.quiet_s = quiet_s  # no tenth lines before a task has run this long
        self._marks: dict[TaskID, _Mark] = {}

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: int = 0,
        visible: bool = True,
        **fields,
    ) -> TaskID:
        task_id = super().add_task(description, start, total, completed, visible, **fields)
        now = time.monotonic()
        self._marks[task_id] = _Mark(now, completed, now, self._tenth(self._task(task_id)))
        self._report(task_id, force=True)
        return task_id

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _task(self, task_id: TaskID) -> Task:
        with self._lock:
            return self._tasks[task_id]

    @staticmethod
    def _tenth(task: Task) -> int:
        return int(10 * task.completed / task.total) if task.total else 0

    def _report(self, task_id: TaskID, force: bool = False) -> None:
        task, mark = self._task(task_id), self._marks.get(task_id)
        if mark is None or mark.ended:
            return
        now, tenth = time.monotonic(), self._tenth(task)
        done = task.total is not None and task.completed >= task.total
        crossed = tenth > mark.last_tenth and now - mark.start_time >= self.quiet_s
        moved = crossed or now - mark.last_time >= self.interval_s
        if not (force or done or moved):
            return
        mark.last_time, mark.last_tenth, mark.ended = now, tenth, done
        log.info("%s", self.line(task, mark, now))

    def line(self, task: Task, mark: _Mark, now: float) -> str:
        """``[stage] description: 120/805 (15%) 3.2 it/s ETA 3m28s info``."""
        done = task.completed
        elapsed = now - mark.start_time
        rate = (done - mark.start_completed) / elapsed if elapsed > 0 else 0.0
        parts = [f"[{self.stage}] {task.description}:"]
        if task.total:
            parts.append(f"{_count(done)}/{_count(task.total)} ({100 * done / task.total:.0f}%)")
        else:
            parts.append(f"{_count(done)} done")
        if task.total is not None and done >= task.total:
            parts.append(f"{rate:.2f} it/s ETA 0s, took {duration(elapsed)}")
        elif rate > 0:
            eta = (task.total - done) / rate if task.total else None
            # work is left: never "0s", which reads as done
            left = None if eta is None else duration(eta) if round(eta) > 0 else "<1s"
            parts.append(f"{rate:.2f} it/s" + (f" ETA {left}" if left else ""))
        else:
            parts.append("ETA ?")
        info = str(task.fields.get("info", ""))
        return " ".join(parts + ([info] if info else []))


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def duration(seconds: float) -> str:
    """3m28s, 1h02m, 12s."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
