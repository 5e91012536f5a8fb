"""Training on two CPU ranks over gloo, as a user runs it (`python train.py`, Lightning
launches the second rank itself), and the per-step metrics the sharding tests compare with
one process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
