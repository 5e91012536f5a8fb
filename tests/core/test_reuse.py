"""What the pipeline says of a step whose last run did not finish: it resumes a run of the
same config and says so; one of another config is set aside by the stage, and the pipeline's
line says "starting fresh" instead of promising a resume."""

from __future__ import annotations

import json

from matrix.core.provenance import ATTEMPT, config_hash
from matrix.core.reuse import reuse_decision
from matrix.core.stage import stage_dir
from tests.conftest import compose


def _unfinished_run(cfg, stage: str) -> None:
    folder = stage_dir(cfg, stage)
    folder.mkdir(parents=True)
    hashes = {"config_hash": config_hash(cfg, stage)}
    hashes["resume_hash"] = config_hash(cfg, stage, resumable=True)
    (folder / ATTEMPT).write_text(json.dumps(hashes))
    (folder / "state.json").write_text("{}")  # some output, no manifest: not finished


def test_an_unfinished_run_is_resumed_only_under_its_own_config(tmp_path):
    base = [f"paths.runs_dir={tmp_path}", "run.name=r", "logger=none"]
    cfg = compose("generate", base)
    _unfinished_run(cfg, "generate")
    same = reuse_decision(cfg, "generate")
    assert not same.reuse and same.why == "the last run did not finish; resuming it"

    # a higher target extends the same run (a resumable change)
    higher = compose("generate", [*base, "generator.sets.general.target=999"])
    assert reuse_decision(higher, "generate").why.endswith("resuming it")

    other = compose("generate", [*base, "generate.filters.drop_truncated=false"])
    why = reuse_decision(other, "generate").why
    assert why.startswith("the last run did not finish and its last run had config hash")
    assert why.endswith("starting fresh")
