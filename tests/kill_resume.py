"""Kill a stage's process at chosen points and restart it until it finishes.

A stage runs as a subprocess (the real CLI). `kill_when` starts it once per threshold and
sends SIGKILL as soon as its output holds that many complete rows, so the kill points are
set by the test (the seed picks thresholds), not by timing; how far past a threshold the
process gets before the signal lands varies, which the resume must not care about.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tests.conftest import ROOT


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MATRIX_NO_PROGRESS": "1"}


def complete_rows(paths: Iterable[Path]) -> int:
    """Complete lines (newline-terminated) over `paths` that exist."""
    n = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):  # not written yet, or being replaced
            n += p.read_bytes().count(b"\n")
    return n


def thresholds(seed: int, total: int, kills: int) -> list[int]:
    """Where to kill: one row count drawn from each of `kills` equal parts of [1, total),
    so the kills spread over the run (and over several sets or benchmarks)."""
    rng = random.Random(seed)
    edges = [1 + (total - 1) * k // kills for k in range(kills + 1)]
    return [rng.randrange(a, b) for a, b in zip(edges, edges[1:], strict=False)]


def start(cmd: Sequence[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, env=stage_env(), stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    rc = proc.wait(timeout)
    assert rc == 0, f"exit code {rc}; log tail:\n{log.read_text(errors='replace')[-4000:]}"


def kill_when(
    cmd: Sequence[str],
    rows: Callable[[], int],
    at: Sequence[int],
    log: Path,
    timeout: float = 180,
) -> list[int]:
    """Start `cmd` once per threshold in `at` and SIGKILL it once `rows()` reaches it;
    returns the row counts seen at the kills (a run that ended first is not a kill)."""
    seen = []
    for threshold in at:
        proc = start(cmd, log)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            n = rows()
            if n >= threshold:
                proc.send_signal(signal.SIGKILL)
                seen.append(n)
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"fewer than {threshold} rows after {timeout}s")
            time.sleep(0.01)
        if proc.wait() not in (0, -signal.SIGKILL):
            finish(proc, log)  # a crash: fail with the log
    return seen
