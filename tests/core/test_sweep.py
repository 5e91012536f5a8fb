from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from matrix.common.io import write_json
from matrix.common.validation import ConfigError
from matrix.core.pipeline import objective_value
from matrix.core.sweep import arm_name, flags_first
from tests.conftest import RANDOM_MODEL_OVERRIDES, ROOT, tiny_llm_overrides


def test_arm_name_keeps_only_what_changes_results() -> None:
    overrides = [
        "experiment=comm_ablation_tiny",
        "debug=tiny",
        "run.name=x",
        "llm.backends.smollm2.model=/a/b",
        "optimizer.lr=0.001",
        "communication=none",
    ]
    assert arm_name(overrides) == "communication=none,optimizer.lr=0.001"
    assert arm_name(["experiment=x"]) == ""
    # group choices of placement settings are left out too; a step's own settings stay
    placement = ["logger=none", "hydra/sweeper=optuna_lr", "pipeline.objective=a/b"]
    step = "+pipeline.steps.train_sft.config.optimizer.lr=0.1"
    assert arm_name([*placement, step]) == step


def test_arm_name_puts_swept_keys_first_and_fits_a_folder_name() -> None:
    fixed = [f"generate.filters.option_{i}=a_long_value_{i}" for i in range(16)]
    names = [
        arm_name([*fixed, f"optimizer.lr={lr}", "trainer.max_epochs=2"], swept=["optimizer.lr"])
        for lr in (0.00012520653814999459, 0.00019578897201212982)
    ]
    # too long: the swept value and a hash of the whole name
    assert names[0].startswith("optimizer.lr=0.00012520653814999459~")
    assert names[0] != names[1]
    # with no swept keys known (a sweep on the command line), the start of the name
    cut = arm_name([*fixed, "optimizer.lr=0.1"])
    assert cut.startswith("generate.filters.option_0=a_long_value_0,") and len(cut.encode()) <= 240


def test_multirun_flag_may_follow_overrides() -> None:
    argv = ["pipeline.py", "experiment=comm_ablation_tiny", "-m", "communication=none,random"]
    assert flags_first(argv) == [
        "pipeline.py",
        "-m",
        "experiment=comm_ablation_tiny",
        "communication=none,random",
    ]


def test_objective_value_reads_the_runs_scores(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "paths": {"runs_dir": str(tmp_path)},
            "run": {"name": "a"},
            "pipeline": {"objective": "alpaca_eval2/win_rate"},
        }
    )
    write_json(
        tmp_path / "a" / "evaluate" / "scores.json",
        {"scores": {"alpaca_eval2": {"win_rate": 12.5}}},
    )
    assert objective_value(cfg) == 12.5
    cfg.pipeline.objective = "alpaca_eval2/nope"
    with pytest.raises(ConfigError, match="alpaca_eval2/win_rate"):
        objective_value(cfg)


@pytest.mark.slow
def test_comm_ablation_tiny_multirun_writes_three_arms_and_a_report(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MATRIX_RUNS_DIR": str(tmp_path),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "matrix.pipeline",
        "experiment=comm_ablation_tiny",
        "debug=tiny",
        "run.name=comm_ablation_tiny",
        *tiny_llm_overrides(tiny_model_dir),
        *RANDOM_MODEL_OVERRIDES,
        "-m",
        "communication=none,random,structured",
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    # the filter overrides change results, so they are part of every arm's dir name
    dirs = sorted(p.name for p in (tmp_path / "comm_ablation_tiny").iterdir())
    arms = ["communication=none", "communication=random", "communication=structured"]
    assert [d.split(",")[0] for d in dirs] == arms
    (sweep,) = (tmp_path / "multirun" / "pipeline").iterdir()
    md = (sweep / "comparison.md").read_text()
    # the report names arms by what differs between them
    assert f"| metric | {' | '.join(arms)} |" in md
    assert "alpaca_eval2/win_rate" in md and (sweep / "training_loss.png").exists()
