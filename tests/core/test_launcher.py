"""A Hydra multirun over shards through the submitit launcher, then the merge command."""

import json
import os
import subprocess
import sys

import pytest

from matrix.common.io import read_jsonl
from tests.conftest import ROOT, tiny_llm_overrides


@pytest.mark.slow
def test_submitit_local_shards_then_merge(tmp_path, tiny_model_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATRIX_NO_PROGRESS": "1"}
    common = [
        "debug=tiny",
        f"paths.runs_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}/cache",
        "run.name=sweep",
        "logger=none",
        *tiny_llm_overrides(tiny_model_dir),
    ]
    sweep = [
        sys.executable,
        str(ROOT / "simulate.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "shard.count=2",
        "shard.index=0,1",
        *common,
    ]
    # the sweep dir is the default one (runs_dir/multirun/simulate/<time>), as users get it
    out = subprocess.run(sweep, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    merged = subprocess.run(
        [sys.executable, "-m", "matrix.merge", "simulate", *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    stage = tmp_path / "sweep" / "simulate"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert len(manifest["merged_from"]) == 2
    events = read_jsonl(stage / "events.jsonl")
    assert len(events) == manifest["counts"]["events"] == 8 * 4  # every agent, every round
