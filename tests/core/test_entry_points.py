"""A typo in any option of any group, benchmark or backend is reported before any model
loads, naming the key and the closest known one, with exit code 2: under each stage script
and under `python -m matrix.pipeline`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATRIX_RUNS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("command", "override", "key", "suggestion"),
    [
        (["simulate.py"], "communication.kk=3", "communication.kk", "communication.k"),
        (["generate.py"], "generate.limt=3", "generate.limt", "generate.limit"),
        (["train.py"], "trainer.max_step=3", "trainer.max_step", "trainer.max_steps"),
        (["evaluate.py"], "populaton=tiny", "populaton", "population"),
        (
            ["-m", "matrix.pipeline"],
            "eval.benchmarks.alpaca_eval2.limt=3",
            "eval.benchmarks.alpaca_eval2.limt",
            "eval.benchmarks.alpaca_eval2.limit",
        ),
    ],
)
def test_a_typo_on_the_command_line_exits_2_with_a_suggestion(
    tmp_path, command, override, key, suggestion
):
    out = _run([*command, override], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{key}: unknown key; did you mean `{suggestion}`?" in out.stderr
    assert "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    ("command", "override", "key", "suggestion"),
    [
        # added keys pass Hydra and are caught after composition, before any model loads
        (
            ["-m", "matrix.pipeline", "experiment=demo"],
            "+eval.benchmarks.arena_hard.n_bootstrp=3",
            "eval.benchmarks.arena_hard.n_bootstrp",
            "did you mean `eval.benchmarks.arena_hard.n_bootstrap`?",
        ),
        (
            ["simulate.py"],
            "+llm.backends.smollm2.batch_sise=3",
            "llm.backends.smollm2.batch_sise",
            "unknown option of HFBackend; did you mean `llm.backends.smollm2.batch_size`?",
        ),
        (
            ["evaluate.py", "eval=demo"],
            "+eval.benchmarks.alpaca_eval2.judge_sampling.temprature=0",
            "eval.benchmarks.alpaca_eval2.judge_sampling.temprature",
            "unknown option of Sampling; did you mean "
            "`eval.benchmarks.alpaca_eval2.judge_sampling.temperature`?",
        ),
        (
            ["train.py"],
            "+model.lora.alpah=8",
            "model.lora.alpah",
            "did you mean `model.lora.alpha`?",
        ),
    ],
)
def test_an_added_unknown_option_exits_2_before_any_model_loads(
    tmp_path, command, override, key, suggestion
):
    out = _run([*command, override], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{key}: " in out.stderr and suggestion in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("manifest.json"))


@pytest.mark.parametrize(
    ("command", "overrides", "expected"),
    [
        (
            ["simulate.py"],
            ["simulation.max_rounds=many", "simulation.schedule=parallel"],
            [
                "simulation.max_rounds: 'many' is not an integer >= 1",
                "simulation.schedule: 'parallel' is not one of 'lockstep', 'groups'",
            ],
        ),
        (
            ["generate.py"],
            ["generate.batch_size=big", "generator.sets.general.kind=kto"],
            [
                "generate.batch_size: 'big' is not an integer >= 1",
                "generator.sets.general.kind: 'kto' is not one of 'sft', 'dpo'",
            ],
        ),
        (
            ["evaluate.py", "eval=arena_hard"],
            [
                "eval.benchmarks.arena_hard.n_bootstrap=many",
                "eval.benchmarks.arena_hard.unparsed_verdicts=ignore",
            ],
            [
                "eval.benchmarks.arena_hard.n_bootstrap: 'many' is not an integer >= 1",
                "eval.benchmarks.arena_hard.unparsed_verdicts: 'ignore' is not one of "
                "'loss', 'drop'",
            ],
        ),
        (
            ["-m", "matrix.pipeline"],
            ["llm.roles.judge.temperature=hot", "population.on_error=ignore"],
            [
                "llm.roles.judge.temperature: 'hot' is not a number >= 0",
                "population.on_error: 'ignore' is not one of 'skip', 'fail'",
            ],
        ),
    ],
)
def test_a_wrong_type_or_choice_exits_2_naming_the_key_and_what_it_takes(
    tmp_path, command, overrides, expected
):
    """Typed schemas (matrix/*/settings.py) are checked right after composition: every wrong
    value at once, before any model loads."""
    out = _run([*command, *overrides], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    for line in expected:
        assert line in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("manifest.json"))
