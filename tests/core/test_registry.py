"""The stage registry is the one place that says what a stage is: a stage added there is
run, validated, hashed, reused and found by the pipeline and the CLI with no other edit."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from matrix.analysis import arms
from matrix.common.validation import ConfigError, ConfigProblems
from matrix.core import registry
from matrix.core.config_check import CONF_DIR
from matrix.core.pipeline import run_pipeline
from matrix.core.provenance import config_hash
from matrix.core.registry import SHARDED_STAGES, STAGES, Stage, get_stage
from matrix.core.stage import stage_dir

CALLS: list[int] = []


def run_count(cfg: DictConfig) -> dict:
    """A stage that writes one file and finishes like every stage does."""
    from matrix.core.stage import open_stage

    CALLS.append(int(cfg.seed))
    run = open_stage(cfg, "count")
    (run.dir / "count.txt").write_text(str(cfg.seed))
    return run.finish({"seed": int(cfg.seed)})["counts"]


def validate_count(cfg: DictConfig) -> ConfigProblems:
    p = ConfigProblems()
    p.check(int(cfg.seed) >= 0, "seed", "must be >= 0 for the count stage")
    return p


@pytest.fixture
def count_stage(monkeypatch):
    stage = Stage(
        name="count",
        run_ref=f"{__name__}:run_count",
        hash_keys=("seed",),
        validate_ref=f"{__name__}:validate_count",
    )
    monkeypatch.setitem(registry.STAGES, "count", stage)
    CALLS.clear()
    return stage


def _cfg(tmp_path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "pipeline",
            [f"paths.runs_dir={tmp_path}", "logger=none", "pipeline.stages=[count]", *overrides],
        )


def test_every_consumer_reads_the_registry():
    assert tuple(arms.STAGES) == tuple(STAGES) == ("simulate", "generate", "train", "evaluate")
    assert SHARDED_STAGES == ("simulate", "generate", "evaluate")
    assert not STAGES["train"].shardable
    for s in STAGES.values():  # every reference resolves
        assert registry._load(s.run_ref) and registry._load(s.validate_ref) and s.schema()
        if s.shardable:
            assert callable(s.merge_fn())
    with pytest.raises(ConfigError, match="'sim' is not a stage; use one of simulate"):
        get_stage("sim")


def test_a_registered_stage_runs_is_validated_hashed_and_reused(count_stage, tmp_path):
    cfg = _cfg(tmp_path, "seed=3")
    run_pipeline(cfg)
    assert CALLS == [3]
    assert (stage_dir(cfg, "count") / "count.txt").read_text() == "3"
    # its hash covers its own keys only
    assert config_hash(cfg, "count") == config_hash(
        _cfg(tmp_path, "seed=3", "data.limit=5"), "count"
    )
    run_pipeline(_cfg(tmp_path, "seed=3", "data.limit=5"))  # reused: a key it does not read
    assert CALLS == [3]
    run_pipeline(_cfg(tmp_path, "seed=4"))  # its key changed: runs again
    assert CALLS == [3, 4]
    assert count_stage.validate(_cfg(tmp_path, "seed=-1")).items == [
        ("seed", "must be >= 0 for the count stage")
    ]
