"""Every *_tiny preset runs its whole loop (simulate -> generate -> train -> evaluate) on the
tiny random model. comm_ablation_tiny (a three-arm sweep, test_sweep.py) and
paper_matrix_tuned_tiny (SFT then DPO, test_pipeline_steps.py) run in their own tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, RANDOM_MODEL_OVERRIDES, tiny_llm_overrides
from tests.core.test_pipeline_steps import _pipeline

RUN_HERE = ["paper_sft_10k_tiny", "code_tiny", "safety_tiny", "multi_turn_tiny"]


def test_every_tiny_preset_runs_in_some_test() -> None:
    tiny = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*_tiny.yaml"))
    assert sorted([*RUN_HERE, "comm_ablation_tiny", "paper_matrix_tuned_tiny"]) == tiny


@pytest.mark.slow
@pytest.mark.parametrize("preset", RUN_HERE)
def test_tiny_preset_runs_the_whole_loop(preset: str, tiny_model_dir: Path, tmp_path: Path):
    args = [
        f"experiment={preset}",
        "debug=tiny",
        "run.name=loop",
        "logger=none",
        *tiny_llm_overrides(tiny_model_dir),
        *RANDOM_MODEL_OVERRIDES,
    ]
    _pipeline(args, tmp_path)
    run = tmp_path / "loop"
    for stage in ("simulate", "generate", "train", "evaluate"):
        assert json.loads((run / stage / "manifest.json").read_text())["complete"], stage
    assert json.loads((run / "generate" / "manifest.json").read_text())["counts"]["sft"] > 0
    # the preset's own benchmarks were scored
    wanted = OmegaConf.load(run / "evaluate" / "manifest.json").config.eval.benchmarks
    scores = json.loads((run / "evaluate" / "scores.json").read_text())["scores"]
    assert set(scores) == set(wanted)
