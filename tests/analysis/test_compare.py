from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from matrix.analysis.arms import arm_names, find_run_dirs
from matrix.analysis.compare import compare
from matrix.core.sweep import ARMS_FILE
from tests.doubles import BagOfWords, write_fake_run

ARMS = {"communication=none": 0.3, "communication=random": 0.5, "communication=structured": 1.0}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "comm_ablation_tiny"
    for arm, q in ARMS.items():
        write_fake_run(root / arm, arm, q)
    return root


def test_compare_table_has_every_arm_and_ci(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = compare([sweep], out, encoder=BagOfWords(), wandb_log=False)
    md = (out / "comparison.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    for arm in ARMS:
        assert arm in header
    # the CI folds into the value: "value [lo, hi]"
    assert "| alpaca_eval2/win_rate | 6 [0.1, 11.9] | 10 [4.1, 15.9] | 20 [14.1, 25.9] |" in md
    assert "win_rate_ci95" not in md and "win_rate_se" not in md
    assert "| final_loss |" in md and "| sft/instruction_distinct_2 |" in md
    assert set(result["plots"]) == {"training_loss", "eval_scores", "data_diversity"}


def test_plots_are_valid_pngs(sweep: Path, tmp_path: Path) -> None:
    from PIL import Image

    result = compare([sweep], tmp_path / "r", encoder=BagOfWords(), wandb_log=False)
    for p in result["plots"].values():
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG"
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn


def test_lineage_points_to_training_rows_and_their_scenarios(sweep: Path, tmp_path: Path) -> None:
    result = compare([sweep], tmp_path / "r", encoder=BagOfWords(), lineage_k=1, wandb_log=False)
    first = result["lineage"]["communication=none"][0]
    # answer 0 is about sourdough bread: its nearest training row is the bread row (s0)
    assert first["neighbours"][0]["row_id"] == "communication=none-0"
    assert first["neighbours"][0]["scenario_ids"] == ["s0"]
    assert first["neighbours"][0]["agent_ids"] == ["agent-0"]
    assert "s0" in (tmp_path / "r" / "comparison.md").read_text()


def test_sweep_dir_arms_file_and_names(sweep: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun" / "x"
    sweep_dir.mkdir(parents=True)
    dirs = sorted(sweep.iterdir())
    (sweep_dir / ARMS_FILE).write_text("".join(f"{d}\n" for d in dirs[:2]))
    assert find_run_dirs([sweep_dir]) == [d.resolve() for d in dirs[:2]]
    assert arm_names([d.resolve() for d in dirs]) == sorted(ARMS)
    shared = [Path(f"/r/x/communication={c},generate.limit=2") for c in ("none", "random")]
    assert arm_names(shared) == ["communication=none", "communication=random"]
    with pytest.raises(FileNotFoundError, match="no run dirs"):
        find_run_dirs([tmp_path / "multirun"])


def test_wandb_offline_run_logs_tables(sweep: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "r"
    compare([sweep], out, encoder=BagOfWords(), lineage_answers=0)
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_run_with_an_sft_step_is_compared_by_its_final_train_stage(tmp_path: Path) -> None:
    # experiment=paper_matrix_tuned: train_sft/ (SFT) next to train/ (DPO from it)
    root = tmp_path / "runs"
    run = write_fake_run(root / "paper_matrix_tuned_tiny", "tuned", 1.0, "paper_matrix_tuned_tiny")
    sft = run / "train_sft"
    shutil.copytree(run / "train", sft)
    (sft / "metrics.jsonl").write_text('{"step": 1, "train/loss": 99.0}\n', encoding="utf-8")
    assert find_run_dirs([root]) == [run.resolve()]
    result = compare([root], tmp_path / "r", encoder=BagOfWords(), wandb_log=False)
    training = dict((r[0], r[1]) for r in result["tables"]["training"])
    assert training["first_loss"] == "4.75" and training["final_loss"] == "3"  # train/, not SFT's
