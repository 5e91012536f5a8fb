"""matrix.common.progress: plain lines in a log (counts, percent, rate, ETA; one a tenth and
one per interval, not one per update), rich bars in a terminal, nothing on other ranks."""

from __future__ import annotations

import logging
import re

import pytest

from matrix.common import progress as progress_mod
from matrix.common.progress import LineProgress, duration, progress, track

LINE = re.compile(
    r"^\[(?P<stage>\w+)\] (?P<what>[^:]+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\) "
    r"(?P<rate>[\d.]+) it/s ETA (?P<eta>\d+h\d\dm|\d+m\d\ds|\d+s|<1s)"
)


def stage_lines(log: str, stage: str) -> list[re.Match]:
    """The progress lines of `stage` in a log (after any logging prefix), parsed by LINE."""
    found = (
        LINE.match(x[x.index(f"[{stage}] ") :]) for x in log.splitlines() if f"[{stage}] " in x
    )
    return [m for m in found if m]


class Lines:
    """The progress lines logged so far."""

    def __init__(self, caplog):
        self.caplog = caplog

    def __getitem__(self, i):
        return self.caplog.messages[i]

    def __len__(self) -> int:
        return len(self.caplog.messages)


@pytest.fixture
def lines(caplog) -> Lines:
    caplog.set_level(logging.INFO, logger="matrix.progress")
    return Lines(caplog)


def test_a_log_gets_a_line_a_tenth_with_counts_rate_and_eta(monkeypatch, lines):
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    with LineProgress("evaluate", interval_s=1e9) as bar:
        task = bar.add_task("judging alpaca_eval2", total=805)
        for _ in range(805):
            clock[0] += 0.25  # 4 items a second
            bar.advance(task)
    assert lines[0] == "[evaluate] judging alpaca_eval2: 0/805 (0%) ETA ?"
    parsed = [LINE.match(x) for x in lines[1:]]
    assert all(parsed), lines
    # one line as each tenth is crossed (10% .. 100%), not one per item
    assert [int(m["pct"]) for m in parsed] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    first = parsed[0]
    assert (first["done"], first["total"], first["rate"]) == ("81", "805", "4.00")
    assert first["eta"] == duration((805 - 81) / 4) == "3m01s"
    assert lines[-1].startswith("[evaluate] judging alpaca_eval2: 805/805 (100%) 4.00 it/s ETA 0s")


def test_a_fast_task_with_work_left_never_says_eta_0s(monkeypatch, lines):
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    with LineProgress("train", interval_s=1e9) as bar:
        task = bar.add_task("epoch 1", total=100)
        for _ in range(100):
            clock[0] += 0.05  # 20 steps a second: at 90% the 0.5 s left rounds to 0 s
            bar.advance(task)
    parsed = {int(m["pct"]): m["eta"] for m in map(LINE.match, lines[1:])}
    assert parsed[90] == "<1s"
    assert parsed[100] == "0s"


def test_a_task_done_within_two_seconds_logs_its_start_and_end_only(monkeypatch, lines):
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    with LineProgress("train", interval_s=1e9) as bar:
        task = bar.add_task("tokenizing", total=24)
        for _ in range(24):
            clock[0] += 0.001
            bar.advance(task)
    assert len(lines) == 2, list(lines.caplog.messages)
    assert lines[0] == "[train] tokenizing: 0/24 (0%) ETA ?"
    assert lines[1].startswith("[train] tokenizing: 24/24 (100%)")
    assert lines[1].endswith("took 0s")


def test_tenth_lines_start_once_the_task_has_run_two_seconds(monkeypatch, lines):
    clock = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    with LineProgress("simulate", interval_s=1e9) as bar:
        task = bar.add_task("rounds", total=10)
        for _ in range(10):
            clock[0] += 0.5  # 5 s in all: the tenths crossed in the first 2 s are not logged
            bar.advance(task)
    pcts = [int(LINE.match(x)["pct"]) for x in lines[1:]]
    assert pcts == [40, 50, 60, 70, 80, 90, 100]


def test_a_slow_task_gets_a_line_each_interval_and_resumed_work_is_not_in_the_rate(
    monkeypatch, lines
):
    clock = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    with LineProgress("train", interval_s=30) as bar:
        task = bar.add_task("epoch 1", total=1000, completed=500, info="")
        for step in range(501, 521):  # 20 steps of 10 s: 2% of the total, no tenth crossed
            clock[0] += 10
            bar.update(task, completed=step, info=f"loss={3 - step / 1000:.3f}")
    assert len(lines) == 1 + 200 // 30  # the start, then one per 30 s
    m = LINE.match(lines[-1])
    assert m and m["rate"] == "0.10"  # steps done here over time spent here
    assert lines[-1].endswith("loss=2.482")


def test_track_counts_an_iterable_and_a_task_without_total(monkeypatch, lines):
    monkeypatch.setenv("MATRIX_PROGRESS", "lines")
    assert list(track(range(7), "tokenizing", "train")) == list(range(7))
    assert lines[-1].startswith("[train] tokenizing: 7/7 (100%)")
    with progress("generate") as bar:
        bar.add_task("rows", total=None, completed=3)
    assert lines[-1] == "[generate] rows: 3 done ETA ?"


def test_bars_in_a_terminal_nothing_on_other_ranks(monkeypatch):
    monkeypatch.setenv("MATRIX_PROGRESS", "bars")
    bar = progress("simulate")
    assert not isinstance(bar, LineProgress) and not bar.live.console.quiet
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert progress("simulate").disable
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MATRIX_NO_PROGRESS", "1")
    assert progress("simulate").disable


def test_duration():
    assert [duration(s) for s in (0, 12.4, 208, 3720)] == ["0s", "12s", "3m28s", "1h02m"]
