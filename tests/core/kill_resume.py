"""Kill a stage's real process at random points, restart it until it finishes, and measure
what the restarts lost, duplicated and redid.

A stage runs as a subprocess of its real entry point (`simulate.py`, ..., `python -m
matrix.pipeline`) on the tiny random model. `run_with_kills` starts it once per kill point
and sends SIGKILL as soon as the point is reached (a row count of an output, a manifest
appearing), then runs it once more to the end. Kill points are drawn from a seed that is
printed, and set with MATRIX_KILL_SEED, so a failure reproduces:

    MATRIX_KILL_SEED=1234 python -m pytest -q tests/core/test_kill_resume.py

Resumption, not restart, is measured from what the process did, not from what its state
file claims:
- LLM stages: the calls sent to the backend, from the stage's ledger (llm_spend.json, which
  adds up every attempt and every role, evaluate's model under test included; the call cache
  is off, so nothing is free). Calls past an
  uninterrupted run's total were redone; a restart would redo everything before each kill.
  (A batch in flight at a kill was never recorded, so it does not count.)
- train: the metrics.jsonl rows of a killed attempt that a later attempt wrote again (each
  row carries its wall-clock time and throughput, so a recomputed row never equals the
  first one); each is an optimizer step done twice.

A ledger only counts what it holds, and a stage that starts fresh moves its folder, ledger
included, to `<run>/.stale/` (matrix.core.stage.set_aside_stale): a restart's last ledger would
look like a resume's. So a `Watch` samples, while every attempt runs and once it is gone,
counters a resume never lowers (the ledger's calls and tokens, the committed rows and rounds
of the stage's commit record) and the run's `.stale/` folder, which only a fresh start makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

SEED_ENV = "MATRIX_KILL_SEED"


def kill_seed(what: str) -> int:
    """The seed of `what`'s kill points: $MATRIX_KILL_SEED, else a fresh one. Printed, so
    pytest shows it beside a failure."""
    env = os.environ.get(SEED_ENV)
    seed = int(env) if env else random.SystemRandom().randrange(2**31)
    print(f"{what}: kill seed {seed} (reproduce with {SEED_ENV}={seed})", flush=True)
    return seed


def stage_env() -> dict[str, str]:
    # Not this process's W&B service (wandb exports WANDB_SERVICE once a run starts here): a
    # killed stage's run would stay registered in it and its rerun be refused ("run ID is in
    # use"); each stage process starts its own service, as it does for a user.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    # One thread unless the caller says otherwise: the tiny model gains nothing from more, and
    # on a busy machine torch's spinning threads make each call ten times slower.
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, "PYTHONPATH": str(ROOT), "MATRIX_NO_PROGRESS": "1"}


def complete_rows(paths: Iterable[Path]) -> int:
    """Complete lines (newline-terminated) over `paths` that exist."""
    n = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):  # not written yet, or being replaced
            n += p.read_bytes().count(b"\n")
    return n


def jsonl_rows(path: Path) -> list[dict]:
    """The complete rows of a JSONL file (a torn last line left out); [] when absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def thresholds(rng: random.Random, lo: int, hi: int, kills: int) -> list[int]:
    """`kills` row counts in [lo, hi), one drawn from each of `kills` equal parts, so the
    kills spread over the run (non-decreasing; repeats when the range is shorter than
    `kills`)."""
    edges = [lo + (hi - lo) * k // kills for k in range(kills + 1)]
    return [rng.randrange(a, max(b, a + 1)) for a, b in zip(edges, edges[1:], strict=False)]


@dataclass(frozen=True)
class Point:
    """A kill point: `reached()` turns true once the run is past it; the kill lands `delay`
    seconds later (0: at once, right after the write that reached it)."""

    name: str
    reached: Callable[[], bool]
    delay: float = 0.0

    def __str__(self) -> str:
        return f"{self.name} + {self.delay:.2f}s" if self.delay else self.name


@dataclass
class Watch:
    """Counters a resumed stage never lowers, and the run's `.stale/` folder, which only a
    stage that starts fresh makes; `sample` records any counter that fell below its highest
    value so far (in any attempt) and the folder once it exists."""

    counters: Callable[[], dict[str, int]]
    stale: Path
    high: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (value, attempt)
    problems: dict[str, str] = field(default_factory=dict)  # the first of each kind

    def sample(self, attempt: int) -> dict[str, int]:
        try:
            now = self.counters()
        except (OSError, ValueError):  # a file replaced or written while read: the next sample
            return {}
        for name, value in now.items():
            top, at = self.high.get(name, (value, attempt))
            if value < top:
                self.problems.setdefault(
                    name, f"{name} fell from {top} (attempt {at}) to {value} (attempt {attempt})"
                )
            elif value > top or name not in self.high:  # the attempt that first reached it
                self.high[name] = (value, attempt)
        if self.stale.exists():
            self.problems.setdefault(
                ".stale",
                f"{self.stale}/ appeared (attempt {attempt}): the stage set its outputs aside "
                "and started fresh",
            )
        return now


def rows_at_least(name: str, paths: Callable[[], Iterable[Path]], n: int) -> Point:
    return Point(f"{name} >= {n} rows", lambda: complete_rows(paths()) >= n)


def file_exists(name: str, path: Path) -> Point:
    return Point(name, path.exists)


@dataclass
class Attempt:
    """One start of the process: the point it was killed at (None: it ran to the end) and
    `snapshot()` taken once it was gone."""

    point: str | None
    snapshot: Any = None
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)  # the watch's, once it was gone


@dataclass
class Killed:
    """The attempts of one killed-and-restarted run; the last ran to the end."""

    seed: int
    attempts: list[Attempt] = field(default_factory=list)
    watch: Watch | None = None

    @property
    def kills(self) -> int:
        return sum(a.point is not None for a in self.attempts)


def start(cmd: Sequence[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, env=stage_env(), stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    rc = proc.wait(timeout)
    assert rc == 0, f"exit code {rc}; log tail:\n{log.read_text(errors='replace')[-4000:]}"


def _own_work(did_work, at_start, snapshot) -> bool:
    return did_work is None or did_work(at_start, snapshot())


def run_with_kills(
    cmd: Sequence[str],
    points: Sequence[Point],
    log: Path,
    seed: int,
    snapshot: Callable[[], Any] = lambda: None,
    timeout: float = 600,
    did_work: Callable[[Any, Any], bool] | None = None,
    watch: Watch | None = None,
) -> Killed:
    """Start `cmd` once per point and SIGKILL it when the point is reached and its delay has
    passed, or the next point is reached first (so the run never gets past its later points
    while the kill waits); then run it once more to the end. With `did_work(snapshot at the start,
    snapshot now)`, a point counts only once the attempt has done work of its own (so the
    kill lands inside the work, not while the process starts). `watch` is sampled all along.
    A run that ends before its point was reached is not a kill, and no later points are
    tried."""
    out = Killed(seed, watch=watch)
    for i, point in enumerate(points):
        later = points[i + 1].reached if i + 1 < len(points) else lambda: False
        t0 = time.monotonic()
        at_start = snapshot() if did_work else None
        proc = start(cmd, log)
        killed, kill_at, polls = False, None, 0
        while proc.poll() is None:
            polls += 1
            if watch is not None and polls % 5 == 1:  # every 50 ms
                watch.sample(i + 1)
            if kill_at is None and point.reached() and _own_work(did_work, at_start, snapshot):
                kill_at = time.monotonic() + point.delay
            if kill_at is not None and (time.monotonic() >= kill_at or later()):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{point} not reached after {timeout}s (seed {seed})")
            time.sleep(0.01)
        rc = proc.wait()
        if rc not in (0, -signal.SIGKILL):
            finish(proc, log)  # a crash: fail with the log
        killed = killed and rc == -signal.SIGKILL
        out.attempts.append(
            Attempt(
                str(point) if killed else None,
                snapshot(),
                time.monotonic() - t0,
                watch.sample(i + 1) if watch else {},
            )
        )
        if not killed:
            return out
    t0 = time.monotonic()
    proc = start(cmd, log)
    while watch is not None and proc.poll() is None and time.monotonic() - t0 < timeout:
        watch.sample(len(points) + 1)
        time.sleep(0.05)
    finish(proc, log, timeout)
    last = watch.sample(len(points) + 1) if watch else {}
    out.attempts.append(Attempt(None, snapshot(), time.monotonic() - t0, last))
    return out


# -- what the restarts redid ---------------------------------------------------------------


def ledger_calls(stage_dir: Path) -> int:
    """Backend calls of every attempt of the stage so far (its llm_spend.json)."""
    path = stage_dir / "llm_spend.json"
    return int(json.loads(path.read_text())["total"]["calls"]) if path.exists() else 0


def rows_rewritten(before: list[dict], after: list[dict]) -> int:
    """Rows of `before` (a killed attempt's log) that `after` (the next attempt's) does not
    keep as they were: work a resume redid."""
    kept = 0
    for a, b in zip(before, after, strict=False):
        if a != b:
            break
        kept += 1
    return len(before) - kept


def steps_redone(killed: Killed) -> list[int]:
    """Per kill, the optimizer steps a later attempt did again (attempt snapshots: the
    metrics.jsonl rows)."""
    snaps = [a.snapshot for a in killed.attempts]
    return [rows_rewritten(a, b) for a, b in zip(snaps, snaps[1:], strict=False)]


# -- stage commands --------------------------------------------------------------------------


def cli(script: str, runs: Path, model_dir: Path, name: str, *extra: str) -> list[str]:
    """The stage's real entry point on the tiny model, LLM call cache off (the stage's own
    checkpoint must carry the resume)."""
    from tests.conftest import tiny_llm_overrides

    entry = ["-m", "matrix.pipeline"] if script == "pipeline" else [str(ROOT / script)]
    return [
        sys.executable,
        *entry,
        "debug=tiny",
        f"paths.runs_dir={runs}",
        f"paths.cache_dir={runs}/cache",
        f"run.name={name}",
        "logger=none",
        "llm.cache.enabled=false",
        *tiny_llm_overrides(model_dir),
        *extra,
    ]
