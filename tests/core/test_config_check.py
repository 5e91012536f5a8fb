"""Wrong invocations fail before any model loads, with exit code 2 and the key named."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_config
from matrix.eval.run import run_evaluate
from matrix.gen.run import run_generate
from matrix.sim.run import run_simulate
from tests.conftest import ROOT, compose

# A folder that holds no model (it exists, so the model preflight passes): a run that got as
# far as loading a model would fail with a different error than the one asserted.
NO_MODEL = [f"llm.backends.smollm2.model={ROOT / 'docs'}", "logger=none"]

STAGES = {"simulate": run_simulate, "generate": run_generate, "evaluate": run_evaluate}


def _check_then_run(stage: str, overrides: list[str], tmp_path: Path) -> None:
    """What matrix.core.cli.run_stage does, in process: config-wide check, then the stage."""
    cfg = compose(stage, ["debug=tiny", f"paths.runs_dir={tmp_path}", *NO_MODEL, *overrides])
    check_config(cfg, stage)
    STAGES[stage](cfg)


@pytest.mark.parametrize(
    ("stage", "override", "message"),
    [
        ("simulate", "+communication.kk=3", "did you mean `communication.k`"),
        ("simulate", "+simulation.memory.max_item=3", "simulation.memory.max_items"),
        ("simulate", "+population.feilds.name=x", "did you mean `population.fields`"),
        ("simulate", "+foo=1", "foo: unknown key"),
        ("simulate", "simulation.target_scenarios=0", "simulation.target_scenarios"),
        ("simulate", "population.size=0", "population.size"),
        ("simulate", "shard.count=0", "shard.count"),
        ("simulate", "shard.index=3", "shard.index"),
        ("simulate", "llm.roles.agent.backend=nope", "llm.roles.agent.backend"),
        ("simulate", "+llm.roles.judg.max_new_tokens=3", "did you mean `llm.roles.judge`"),
        ("generate", "+generator.sets.sft_general.kindd=sft", "generator.sets.sft_general.kind`"),
        ("generate", "generate.limit=0", "generate.limit"),
        ("generate", "generate.batch_size=0", "generate.batch_size"),
        ("evaluate", "eval.benchmarks.alpaca_eval2.limit=0", "eval.benchmarks.alpaca_eval2.limit"),
        ("evaluate", "+eval.sampling.temprature=0.5", "did you mean `eval.sampling.temperature`"),
        ("evaluate", "eval.chunk_size=0", "eval.chunk_size"),
    ],
)
def test_wrong_config_is_refused_before_any_model_loads(tmp_path, stage, override, message):
    with pytest.raises(ConfigError, match=message.replace("`", ".").replace("[", r"\[")):
        _check_then_run(stage, [override], tmp_path)


def test_only_train_refuses_shards():
    for stage in ("simulate", "generate", "evaluate"):
        check_config(compose(stage, ["shard.count=2", "shard.index=1"]), stage)
    with pytest.raises(ConfigError, match="train cannot be sharded"):
        check_config(compose("train", ["shard.count=2"]), "train")


def test_user_yaml_with_a_misspelled_key_is_refused(tmp_path):
    """A generator from the user's own config dir: Hydra merges it without complaint."""
    extra = tmp_path / "conf" / "generator"
    extra.mkdir(parents=True)
    (extra / "mine.yaml").write_text(
        "name: mine\nsets:\n  s1: {kind: sft, source: magpie, taget: 4}\n", encoding="utf-8"
    )
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            "generate",
            overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "generator=mine"],
        )
    with pytest.raises(
        ConfigError, match=r"generator\.sets\.s1\.taget.*generator\.sets\.s1\.target"
    ):
        check_config(cfg, "generate")


def test_every_shipped_option_passes_the_key_check():
    """No false alarms: each option of each group, alone and under debug=tiny."""
    conf = ROOT / "conf"
    for group in (
        "experiment",
        "generator",
        "eval",
        "population",
        "communication",
        "model",
        "trainer",
        "data",
        "logger",
    ):
        for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
            for extra in ([], ["debug=tiny"]):
                check_config(compose("pipeline", [f"{group}={option}", *extra]), "pipeline")


@pytest.mark.parametrize(
    ("script", "override", "key"),
    [
        ("simulate.py", "communication.k=0", "communication.k"),
        ("simulate.py", "+communication.kk=3", "communication.k"),
        (
            "evaluate.py",
            "eval.benchmarks.alpaca_eval2.limit=0",
            "eval.benchmarks.alpaca_eval2.limit",
        ),
    ],
)
def test_cli_exits_2_and_names_the_key(tmp_path, script, override, key):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATRIX_NO_PROGRESS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / script),
        "population=default",
        f"paths.runs_dir={tmp_path}",
        *NO_MODEL,
        override,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert key in out.stderr
    assert not list(tmp_path.rglob("manifest.json"))  # no stage started
