"""`-m` sweeps from every stage's own script: one run folder per arm under one sweep id, the
comparison in the sweep folder, and nothing of another arm or an earlier run set aside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from matrix.common.io import file_sha256, read_jsonl
from matrix.core.sweep import name_sweep_job
from tests.conftest import CONF, ROOT, tiny_llm_overrides
from tests.train.conftest import write_sft


def _run(script: str, runs: Path, *args: str) -> None:
    env = {**os.environ, "MATRIX_RUNS_DIR": str(runs), "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]


def _sweep_dir(runs: Path, stage: str) -> Path:
    (sweep,) = (runs / "multirun" / stage).iterdir()
    return sweep


def _arm_dirs(sweep: Path) -> list[Path]:
    return [Path(x) for x in (sweep / "arms.txt").read_text().split()]


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): file_sha256(f)
        for f in sorted(folder.rglob("*"))
        if f.is_file() and "wandb" not in f.parts
    }


def test_train_sweep_keeps_every_arm_and_the_earlier_run(tmp_path: Path) -> None:
    runs, data = tmp_path / "runs", write_sft(tmp_path / "sft.jsonl", 24)
    fixed = ["debug=tiny", f"data.path={data}", "trainer.max_steps=2"]
    _run("train.py", runs, *fixed)  # an earlier run of the same name, outside the sweep
    before = _tree(runs / "tiny" / "train")
    _run("train.py", runs, "-m", *fixed, "optimizer.lr=1e-5,2e-5,3e-5")

    sweep = _sweep_dir(runs, "train")
    arms = _arm_dirs(sweep)
    assert len(arms) == 3 and len(set(arms)) == 3
    lrs = []
    for arm in arms:
        manifest = json.loads((arm / "train" / "manifest.json").read_text())
        assert manifest["complete"] and arm.parent == (runs / "tiny").resolve()
        assert arm.name.startswith(f"optimizer.lr={manifest['config']['optimizer']['lr']}")
        lrs.append(manifest["config"]["optimizer"]["lr"])
        assert any("train/loss" in r for r in read_jsonl(arm / "train" / "metrics.jsonl"))
    assert sorted(lrs) == [1e-5, 2e-5, 3e-5]
    # every arm under one sweep id; nothing set aside, the earlier run untouched
    sweep_ids = {
        json.loads((a / "train" / "manifest.json").read_text())["config"]["run"]["sweep_id"]
        for a in arms
    }
    assert len(sweep_ids) == 1 and None not in sweep_ids
    assert not list(runs.rglob(".stale"))
    assert _tree(runs / "tiny" / "train") == before
    md = (sweep / "comparison.md").read_text()
    assert "| metric | optimizer.lr=1e-05 | optimizer.lr=2e-05 | optimizer.lr=3e-05 |" in md
    assert (sweep / "training_loss.png").is_file()


def test_simulate_sweep_writes_two_arms(tmp_path: Path, tiny_model_dir: Path) -> None:
    runs = tmp_path / "runs"
    args = ["debug=tiny", "simulation.max_rounds=2", *tiny_llm_overrides(tiny_model_dir)]
    _run("simulate.py", runs, *args, "-m", "communication=none,random")
    arms = _arm_dirs(_sweep_dir(runs, "simulate"))
    assert [a.name.split(",")[0] for a in arms] == ["communication=none", "communication=random"]
    for arm, mode in zip(arms, ("NoCommunication", "RandomCommunication"), strict=True):
        manifest = json.loads((arm / "simulate" / "manifest.json").read_text())
        assert manifest["config"]["communication"]["_target_"].endswith(mode)
    md = (_sweep_dir(runs, "simulate") / "comparison.md").read_text()
    assert "| metric | communication=none | communication=random |" in md and "| scenarios |" in md
    assert not list(runs.rglob(".stale"))


def test_evaluate_sweep_scores_one_model_per_arm(tmp_path: Path, tiny_model_dir: Path) -> None:
    runs = tmp_path / "runs"
    args = [
        "debug=tiny",
        *tiny_llm_overrides(tiny_model_dir),
        f"eval.model.checkpoint={tiny_model_dir}",
        "eval.model.role=null",
    ]
    _run("evaluate.py", runs, *args, "-m", "eval.sampling.max_new_tokens=8,16")
    sweep = _sweep_dir(runs, "evaluate")
    arms = _arm_dirs(sweep)
    assert [a.name.split(",")[0] for a in arms] == [
        "eval.sampling.max_new_tokens=8",
        "eval.sampling.max_new_tokens=16",
    ]
    for arm in arms:
        assert (
            "alpaca_eval2" in json.loads((arm / "evaluate" / "scores.json").read_text())["scores"]
        )
    assert "alpaca_eval2/avg_length" in (sweep / "comparison.md").read_text()


def test_a_stage_sweep_reads_the_unswept_runs_inputs() -> None:
    """generate.py -m reads the simulation of run.name, not of its arm (which has none); the
    pipeline's own sweep (tests/conf/test_presets.py) reads inside each arm."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    override = "generator.sets.general.target=3"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = hydra_compose("generate", ["run.name=base", override], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 0
        cfg.hydra.sweep.dir = "runs/multirun/generate/2026-01-01_00-00-00"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        name_sweep_job(cfg, stage="generate")
    finally:
        HydraConfig.instance().cfg = None
    assert cfg.run.name == f"base/{override}"
    assert cfg.generate.simulation_dir.endswith("/base/simulate")
    assert cfg.run.sweep_id == "base-2026-01-01_00-00-00"
