"""Training on two CPU ranks over gloo, as a user runs it (`python train.py`, Lightning
launches the second rank itself), and the per-step metrics the sharding tests compare with
one process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.common.io import read_jsonl

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
TWO = ("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true")


def metrics(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r}


def train_two_ranks(runs: Path, data: Path, name: str, *overrides: str) -> tuple[Path, str]:
    """The run folder and both ranks' console output of `python train.py` on two ranks."""
    args = tiny_overrides(runs, data, name, *TWO, *overrides)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return runs / name / "train", out.stdout + out.stderr


def assert_trains_as_one_process(one: Path, two: Path, steps: int) -> dict[int, dict]:
    """Two ranks' losses and gradient norms are one process's at every step (the bounds are
    argued in test_fsdp2.py's docstring); the two-rank metrics, for the caller's own checks."""
    a, b = metrics(one), metrics(two)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for s in a:
        assert b[s]["train/loss"] == pytest.approx(a[s]["train/loss"], rel=1e-5), s
        assert b[s]["train/grad_norm"] == pytest.approx(a[s]["train/grad_norm"], rel=1e-3), s
    return b


def assert_resumes_steps_3_and_4(full: Path, resumed: Path) -> None:
    """A run resumed from the step-2 checkpoint trains steps 3 and 4 as the uninterrupted run
    did (a new run folder holds only the steps it trained)."""
    a, b = metrics(full), metrics(resumed)
    assert sorted(b) == [3, 4]
    for s in (3, 4):
        assert b[s]["train/loss"] == pytest.approx(a[s]["train/loss"], rel=1e-6), s
