"""The W&B Report of a finished two-arm sweep, built without a server: its runs are the
sweep's group only, with the loss curves, score bars with a CI table, and data statistics."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from matrix.analysis.arms import load_arms
from matrix.analysis.compare import compare, main
from matrix.analysis.wandb_report import (
    SPEC_FILE,
    build_report,
    report_spec,
    report_target,
    save_report,
)
from matrix.common.io import read_json, write_json
from matrix.core.sweep import ARMS_FILE
from tests.doubles import write_fake_run
from tests.wandb_records import run_records

SWEEP_ID = "comm_ablation_tiny-2026-01-02_03-04-05"
needs_workspaces = pytest.mark.skipif(
    find_spec("wandb_workspaces") is None, reason="wandb-workspaces (the report extra)"
)


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A sweep dir whose arms.txt lists two finished arms of one sweep id."""
    root = tmp_path / "runs" / "comm_ablation_tiny"
    arms = [
        write_fake_run(root / arm, arm, q)
        for arm, q in (("communication=none", 0.3), ("communication=structured", 1.0))
    ]
    for arm in arms:
        for manifest in arm.glob("*/manifest.json"):
            m = read_json(manifest)
            m["config"]["run"]["sweep_id"] = SWEEP_ID
            m["config"]["logger"] = {"wandb": {"project": "matrix-test", "mode": "offline"}}
            write_json(manifest, m)
    sweep = tmp_path / "multirun" / "pipeline" / "2026-01-02_03-04-05"
    sweep.mkdir(parents=True)
    (sweep / ARMS_FILE).write_text("".join(f"{a}\n" for a in arms))
    return sweep


def _grids(spec: dict) -> list[dict]:
    return [b for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]


def _filters(grid: dict) -> dict[str, str]:
    (runset,) = grid["metadata"]["runSets"]
    return {f["key"]["name"]: f["value"] for f in runset["filters"]["filters"]}


def _metrics(grid: dict) -> dict[str, list[str]]:
    """Panel view type -> the metrics its panels plot."""
    out: dict[str, list[str]] = {}
    for panel in grid["metadata"]["panelBankSectionConfig"]["panels"]:
        out.setdefault(panel["viewType"], []).extend(panel["config"].get("metrics") or [])
    return out


def _markdown(spec: dict) -> str:
    return "\n".join(b.get("content", "") for b in spec["spec"]["blocks"])


@needs_workspaces
def test_report_shows_the_sweep_runs_loss_scores_and_data(sweep_dir: Path, tmp_path: Path):
    arms = load_arms([sweep_dir])
    result = compare([sweep_dir], tmp_path / "r", lineage_answers=0, wandb_log=False)
    target = report_target(arms)
    assert target.groups == (SWEEP_ID,) and target.project == "matrix-test"
    report = build_report(arms, result)
    assert report.project == "matrix-test" and SWEEP_ID in report.title

    spec = report_spec(report)
    grids = {_filters(g)["jobType"]: g for g in _grids(spec)}
    assert set(grids) == {"train", "evaluate", "generate"}
    for grid in grids.values():  # every panel shows the sweep's runs of one stage only
        assert _filters(grid)["group"] == SWEEP_ID
    assert _metrics(grids["train"]) == {"Run History Line Plot": ["train/loss"]}
    evaluate = _metrics(grids["evaluate"])
    assert evaluate["Bar Chart"] == ["alpaca_eval2/win_rate"]  # the score with a CI
    assert "Run Comparer" in evaluate
    data = _metrics(grids["generate"])["Bar Chart"]
    assert {"counts/sft", "stats/sft/instruction_distinct_2", "stats/sft/agent_coverage"} <= set(
        data
    )
    # the intervals, per arm, in the table next to the bars
    md = _markdown(spec)
    assert "| alpaca_eval2/win_rate | 6 [0.1, 11.9] | 20 [14.1, 25.9] |" in md
    assert "| sft/instruction_distinct_2 | 0.15 | 0.5 |" in md
    assert "| final_loss |" in md


@needs_workspaces
def test_several_groups_are_all_shown(sweep_dir: Path, tmp_path: Path):
    arms = load_arms([sweep_dir])
    other = arms[1].manifests
    for m in other.values():
        m["config"]["run"]["sweep_id"] = "another-sweep"
    result = compare([sweep_dir], tmp_path / "r", lineage_answers=0, wandb_log=False)
    grid = _grids(report_spec(build_report(arms, result)))[0]
    (runset,) = grid["metadata"]["runSets"]
    group = next(f for f in runset["filters"]["filters"] if f["key"]["name"] == "group")
    assert group["op"] == "IN" and sorted(group["value"]) == sorted([SWEEP_ID, "another-sweep"])


@needs_workspaces
def test_offline_writes_the_spec_and_says_so(sweep_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    arms = load_arms([sweep_dir])
    result = compare([sweep_dir], tmp_path / "r", lineage_answers=0, wandb_log=False)
    report = build_report(arms, result)
    message = save_report(report, tmp_path / "r")
    assert "not saved" in message and "WANDB_MODE=online" in message
    assert read_json(tmp_path / "r" / SPEC_FILE) == json.loads(json.dumps(report_spec(report)))


@needs_workspaces
def test_cli_flag(sweep_dir: Path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    main([str(sweep_dir), "--lineage-answers", "0", "--no-wandb", "--wandb-report"])
    assert "W&B Report not saved" in capsys.readouterr().out
    spec = read_json(sweep_dir / SPEC_FILE)
    assert {_filters(g)["group"] for g in _grids(spec)} == {SWEEP_ID}


def test_missing_package_names_it_and_the_extra(sweep_dir: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)  # import fails
    with pytest.raises(SystemExit) as exit_:
        main([str(sweep_dir), "--lineage-answers", "0", "--no-wandb", "--wandb-report"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "wandb-workspaces" in err and ".[report]" in err
    assert not (sweep_dir / "comparison.md").exists()  # stopped before any work


def test_the_compare_run_joins_the_sweep_group(sweep_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    compare([sweep_dir], tmp_path / "r", lineage_answers=0)
    (run,) = [r.run for r in run_records(tmp_path / "r") if r.WhichOneof("record_type") == "run"]
    assert run.run_group == SWEEP_ID and run.job_type == "compare" and run.project == "matrix-test"
