"""A real Optuna search (hydra/sweeper=optuna_lr) over the pipeline on the tiny random model:
every trial returns `pipeline.objective` from its own evaluate/scores.json to the sweeper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from matrix.common.io import write_jsonl
from tests.conftest import RANDOM_MODEL_OVERRIDES, ROOT, tiny_llm_overrides

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

OBJECTIVE = "alpaca_eval2/avg_length"  # differs between trained models, even random ones
# A random model's greedy answers are newlines (length 0 for every trial): sample them.
SAMPLED_ANSWERS = "eval.sampling={max_new_tokens: 16, temperature: 1.0}"


def _sweep(args: list[str], runs: Path) -> Path:
    env = {**os.environ, "MATRIX_RUNS_DIR": str(runs), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "matrix.pipeline",
        "hydra/sweeper=optuna_lr",
        "hydra.sweeper.n_trials=2",
        f"pipeline.objective={OBJECTIVE}",
        "logger=none",
        *args,
        "-m",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    (sweep,) = (runs / "multirun" / "pipeline").iterdir()
    return sweep


def _assert_optuna_got_each_trials_objective(sweep: Path) -> None:
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    arms = [Path(x) for x in (sweep / "arms.txt").read_text().split()]
    assert len(arms) == 2  # one run dir per trial
    trials = []
    for arm in arms:
        bench, metric = OBJECTIVE.split("/")
        value = json.loads((arm / "evaluate" / "scores.json").read_text())["scores"][bench][metric]
        cfg = json.loads((arm / "train" / "manifest.json").read_text())["config"]
        params = {
            "optimizer.lr": cfg["optimizer"]["lr"],
            "optimizer.weight_decay": cfg["optimizer"]["weight_decay"],
            "trainer.max_epochs": cfg["trainer"]["max_epochs"],
        }
        assert set(params) == set(result["best_params"])  # the search space of optuna_lr.yaml
        trials.append((value, params))
    assert len({v for v, _ in trials}) == 2  # else any value would pass for the best
    assert result["best_value"] == max(v for v, _ in trials)
    assert result["best_params"] in [p for v, p in trials if v == result["best_value"]]


def test_optuna_sweep_of_train_and_evaluate_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Only the steps the search changes: train on a fixed file, then evaluate.
    data = tmp_path / "sft.jsonl"
    topics = ["bake bread", "fix a bike", "plan a trip", "learn chess", "write a poem"]
    write_jsonl(
        data,
        (
            {
                "messages": [
                    {"role": "user", "content": f"How do I {t}?"},
                    {"role": "assistant", "content": f"To {t}, start small and practise."},
                ]
            }
            for t in topics
        ),
    )
    sweep = _sweep(
        [
            "experiment=paper_sft_10k_tiny",
            "debug=tiny",
            "run.name=optuna",
            "pipeline.stages=[train,evaluate]",
            f"data.path={data}",
            "eval.limit=2",
            "eval.benchmarks.arena_hard.judge_sampling.max_new_tokens=8",
            SAMPLED_ANSWERS,
            *tiny_llm_overrides(tiny_model_dir),
        ],
        tmp_path / "runs",
    )
    _assert_optuna_got_each_trials_objective(sweep)
    assert (sweep / "comparison.md").exists()


@pytest.mark.slow
def test_optuna_sweep_of_the_whole_tiny_loop(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The documented command (docs/experiments.md), two trials of the whole loop each.
    sweep = _sweep(
        [
            "experiment=paper_sft_10k_tiny",
            "debug=tiny",
            "run.name=optuna",
            *tiny_llm_overrides(tiny_model_dir),
            *RANDOM_MODEL_OVERRIDES,
            SAMPLED_ANSWERS,
        ],
        tmp_path / "runs",
    )
    _assert_optuna_got_each_trials_objective(sweep)
    for arm in (sweep / "arms.txt").read_text().split():
        assert (Path(arm) / "simulate" / "manifest.json").exists()
