"""Lightning's logger for the train stage (`logger.lightning`, matrix/train/loggers.py): the
rows of metrics.jsonl reach the chosen logger at the same optimizer steps with the same values
(under gradient accumulation, with validation, after a mid-run resume), logger=wandb keeps one
W&B run, and the progress bar shows the loss and lr."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import lightning as L
import pytest
import wandb
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigProblems
from matrix.train import loggers
from matrix.train.loggers import StageWandbLogger, build_logger, check_logger
from matrix.train.run import run_train
from tests.common.test_progress import stage_lines

from .conftest import compose_train, tiny_overrides

# 18 training rows / (2 rows x 2 micro-batches) -> 4 steps; validation after micro-batches 4
# and 8 (steps 2 and 4) on the 6 held-out rows; a checkpoint every 2 steps
SETTINGS = (
    "data.packing=false",
    "data.batch_size=2",
    "trainer.accumulate_grad_batches=2",
    "trainer.max_steps=4",
    "train.checkpoint.every_n_steps=2",
    "train.checkpoint.keep=-1",
    "data.val_fraction=0.25",
    "trainer.val_check_interval=4",
)


class Seen(L.Callback):
    """What Lightning held at the end of training: its loggers and progress-bar metrics."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.loggers = list(trainer.loggers)
        self.progress_bar = dict(trainer.progress_bar_metrics)


def train(runs: Path, data: Path, name: str, logger: str, *extra: str) -> tuple[Path, Seen]:
    drop = {"logger=none"} | (
        {"trainer.progress_bar=false"} if "trainer.progress_bar=true" in extra else set()
    )
    args = [o for o in tiny_overrides(runs, data, name, *SETTINGS, *extra) if o not in drop]
    seen = Seen()
    run_train(compose_train([*args, f"logger={logger}"]), callbacks=[seen])
    return runs / name / "train", seen


def jsonl_curve(stage_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_jsonl(stage_dir / "metrics.jsonl") if key in r}


def csv_curve(path: Path, key: str) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r[key]}


def assert_progress_bar(seen: Seen, stage_dir: Path) -> None:
    last = [r for r in read_jsonl(stage_dir / "metrics.jsonl") if "train/loss" in r][-1]
    assert seen.progress_bar["train/loss"] == last["train/loss"]
    assert seen.progress_bar["train/lr"] == last["train/lr"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, data_dir):
    return train(tmp_path_factory.mktemp("runs"), data_dir / "sft_short.jsonl", "c", "csv")


def test_csv_logger_gets_the_rows_of_metrics_jsonl(csv_run):
    stage_dir, seen = csv_run
    [logger] = seen.loggers
    assert isinstance(logger, CSVLogger)
    path = stage_dir / "csv" / "version_0" / "metrics.csv"
    assert Path(logger.log_dir) == path.parent
    # the same optimizer steps (Lightning's own default would be one less), the same numbers
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_seen", "val/loss"):
        assert csv_curve(path, key) == jsonl_curve(stage_dir, key), key
    assert sorted(csv_curve(path, "train/loss")) == [1, 2, 3, 4]
    assert sorted(csv_curve(path, "val/loss")) == [2, 4]
    # metrics.jsonl is written as before: one row per step, then the validation rows
    rows = read_jsonl(stage_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 2, 3, 4, 4]
    assert all(list(r)[0] == "time" and list(r)[-1] == "step" for r in rows)
    assert not (stage_dir / "wandb").exists()  # logger=csv opens no W&B run


def test_progress_bar_shows_loss_and_lr(csv_run):
    stage_dir, seen = csv_run
    assert {"train/loss", "train/lr"} <= set(seen.progress_bar)
    assert_progress_bar(seen, stage_dir)


def test_none_has_no_logger_and_still_a_progress_bar(tmp_path, data_dir, caplog, monkeypatch):
    monkeypatch.setenv("MATRIX_PROGRESS", "lines")  # what a log that is not a terminal gets
    monkeypatch.setenv("MATRIX_PROGRESS_QUIET_S", "0")  # a line a step even for fast steps
    caplog.set_level(logging.INFO, logger="matrix.progress")
    data = data_dir / "sft_short.jsonl"
    stage_dir, seen = train(tmp_path, data, "n", "none", "trainer.progress_bar=true")
    assert seen.loggers == []
    assert not {"csv", "tensorboard", "wandb"} & {p.name for p in stage_dir.iterdir()}
    assert_progress_bar(seen, stage_dir)
    # the progress lines: tokenizing every row, then the epoch's 4 optimizer steps (max_steps),
    # one line a step (each a quarter), with the loss and lr metrics.jsonl has at that step
    lines = stage_lines("\n".join(caplog.messages), "train")
    assert [(m["done"], m["total"]) for m in lines if m["what"] == "tokenizing"][-1] == ("24", "24")
    epoch = [m for m in lines if m["what"] == "epoch 1"]
    assert [(m["done"], m["total"]) for m in epoch] == [(str(k), "4") for k in range(1, 5)]
    logged = {r["step"]: r for r in read_jsonl(stage_dir / "metrics.jsonl") if "train/loss" in r}
    for m in epoch:
        row = logged[int(m["done"])]
        assert m.string.endswith(f"loss={row['train/loss']:.4g} lr={row['train/lr']:.4g}")
    assert all(m["eta"] != "0s" for m in epoch[:-1]) and epoch[-1]["eta"] == "0s"


def test_resumed_run_logs_the_remaining_steps(csv_run, tmp_path, data_dir):
    """Killed after the step-2 checkpoint (its later checkpoints removed), the rerun resumes in
    place: metrics.jsonl holds each step once with the uninterrupted run's losses, and the
    resumed attempt's CSV (Lightning's next version folder) holds steps 3 and 4 (validation
    at 4) with the values of metrics.jsonl."""
    full_dir, _ = csv_run
    data = data_dir / "sft_short.jsonl"
    stage_dir, _ = train(tmp_path, data, "k", "csv")
    for name in ("last.ckpt", "step000004.ckpt"):
        (stage_dir / "checkpoints" / name).unlink()
    _, seen = train(tmp_path, data, "k", "csv")
    assert Path(seen.loggers[0].log_dir) == stage_dir / "csv" / "version_1"
    rows = read_jsonl(stage_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 2, 3, 4, 4]
    resumed = jsonl_curve(stage_dir, "train/loss")
    assert resumed == pytest.approx(jsonl_curve(full_dir, "train/loss"), rel=1e-5)
    path = stage_dir / "csv" / "version_1" / "metrics.csv"
    assert csv_curve(path, "train/loss") == {s: resumed[s] for s in (3, 4)}
    assert csv_curve(path, "val/loss") == {4: jsonl_curve(stage_dir, "val/loss")[4]}


def test_dpo_rewards_reach_the_logger(tmp_path, data_dir):
    stage_dir, seen = train(tmp_path, data_dir / "dpo.jsonl", "d", "csv", "objective=dpo")
    path = stage_dir / "csv" / "version_0" / "metrics.csv"
    keys = ("train/loss", "train/rewards/accuracy", "train/rewards/margin", "val/rewards/accuracy")
    for key in keys:
        assert csv_curve(path, key) == jsonl_curve(stage_dir, key), key
    assert csv_curve(path, "train/loss")[1] == pytest.approx(math.log(2), abs=1e-4)
    assert_progress_bar(seen, stage_dir)


def test_tensorboard_event_files_hold_the_rows(tmp_path, data_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stage_dir, seen = train(tmp_path, data_dir / "sft_short.jsonl", "t", "tensorboard")
    assert isinstance(seen.loggers[0], TensorBoardLogger)
    folder = stage_dir / "tensorboard" / "version_0"
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    assert "hp_metric" not in events.Tags()["scalars"]
    for key in ("train/loss", "train/lr", "val/loss"):
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged == pytest.approx(jsonl_curve(stage_dir, key), rel=1e-6), key  # float32
    assert_progress_bar(seen, stage_dir)


def test_wandb_logger_reuses_the_stage_run(tmp_path, data_dir, monkeypatch):
    """logger=wandb (offline): Lightning's WandbLogger logs to the stage's own W&B run, each
    row once at its optimizer step (W&B's step, as StageRun.log did), and no second run."""
    calls: list[tuple[str, dict, int | None]] = []
    run_log = wandb.Run.log

    def spy(self, data, step=None, **kwargs):
        calls.append((self.id, dict(data), step))
        return run_log(self, data, step=step, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", spy)
    stage_dir, seen = train(tmp_path, data_dir / "sft_short.jsonl", "w", "wandb")
    [logger] = seen.loggers
    assert isinstance(logger, StageWandbLogger)
    run_id = (stage_dir / "wandb" / "run_id").read_text().strip()
    assert logger.experiment.id == run_id
    assert [f.name for f in (stage_dir / "wandb").glob("offline-run-*")] == [
        f.name for f in (stage_dir / "wandb").glob(f"offline-run-*-{run_id}")
    ]
    assert len(list((stage_dir / "wandb").glob("offline-run-*"))) == 1
    assert {c[0] for c in calls} == {run_id}
    for key in ("train/loss", "val/loss"):
        logged = [(step, data[key]) for _, data, step in calls if key in data]
        assert logged == sorted(jsonl_curve(stage_dir, key).items()), key  # once per step
    assert_progress_bar(seen, stage_dir)


def test_build_logger_fills_in_the_stage_folder_and_run(tmp_path):
    def cfg(logger: str, *extra: str):
        return compose_train([f"logger={logger}", *extra])

    assert build_logger(cfg("none"), tmp_path, None) is None
    csv_logger = build_logger(cfg("csv"), tmp_path, None)
    assert isinstance(csv_logger, CSVLogger)
    assert Path(csv_logger.save_dir) == tmp_path and csv_logger.name == "csv"
    mine = build_logger(cfg("csv", f"logger.lightning.save_dir={tmp_path / 'x'}"), tmp_path, None)
    assert Path(mine.save_dir) == tmp_path / "x"
    run = object()  # the stage's W&B run, passed as it is
    w = build_logger(cfg("wandb"), tmp_path, run)
    assert isinstance(w, StageWandbLogger) and w._experiment is run


def problems(*overrides: str) -> list[tuple[str, str]]:
    p = ConfigProblems()
    check_logger(compose_train(list(overrides)), p)
    return p.items


def test_logger_config_problems_are_named(monkeypatch):
    for option in ("none", "csv", "tensorboard", "wandb"):
        if option != "tensorboard" or loggers.installed("tensorboard"):
            assert problems(f"logger={option}") == [], option
    [(key, msg)] = problems("logger=csv", "logger.lightning._target_=lightning.pytorch.Nope")
    assert key == "logger.lightning._target_" and "cannot import" in msg
    [(key, msg)] = problems("logger=csv", "+logger.lightning.nmae=x")
    assert key == "logger.lightning.nmae" and "logger.lightning.name" in msg
    [(key, msg)] = problems("logger=wandb", "logger.wandb.enabled=false")
    assert "logger.wandb.enabled" in msg
    [(key, msg)] = problems("logger=csv", "logger.lightning._target_=matrix.train.loggers.Path")
    assert "not a Lightning logger" in msg
    monkeypatch.setattr(loggers, "installed", lambda module: False)
    [(key, msg)] = problems("logger=tensorboard")
    assert "`tensorboard` package" in msg and "matrix[report]" in msg
