"""What a person reads of a training run: report.md with its PNG curves in the train folder
(refreshed at each checkpoint), and the model card (README.md) of the exported folder, which
an evaluate run of that folder adds its scores to."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from huggingface_hub import ModelCard
from matplotlib.image import imread

from matrix.eval.run import run_evaluate
from matrix.llm.roles import Roles
from matrix.train.report import PANELS, REPORT
from matrix.train.run import run_train
from tests.conftest import build_tiny_llama, compose
from tests.eval.test_run import ScriptedBackend

from .conftest import compose_train, tiny_overrides

# matplotlib's first two colours: the first and second curve of a plot
C0, C1 = np.array([0x1F, 0x77, 0xB4]) / 255, np.array([0xFF, 0x7F, 0x0E]) / 255


def curve_pixels(png: Path, colour: np.ndarray) -> int:
    """Pixels of `png` drawn in `colour` (a curve's line and markers)."""
    rgb = imread(png)[..., :3]
    return int((np.abs(rgb - colour).max(axis=-1) < 0.02).sum())


def report_steps(folder: Path) -> int | None:
    """The last optimizer step report.md covers (None: no report yet)."""
    path = folder / REPORT
    if not path.exists():
        return None
    return int(re.search(r"up to optimizer step (\d+)", path.read_text()).group(1))


class ReportProbe(L.Callback):
    """Reads the step report.md covers at the start of each training batch (a measurement,
    as bench/train.py's callbacks are)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[int, int | None] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.seen[trainer.global_step] = report_steps(self.folder)


def test_dpo_run_writes_report_with_every_curve_refreshed_at_checkpoints(tmp_path, data_dir):
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "dpo.jsonl",
            "dpo",
            "objective=dpo",
            "data.batch_size=2",
            "data.packing=false",
            "data.val_fraction=0.25",
            "trainer.max_steps=4",
            "train.checkpoint.every_n_steps=2",
        )
    )
    folder = tmp_path / "dpo" / "train"
    probe = ReportProbe(folder)
    run_train(cfg, callbacks=[probe])
    # written when the checkpoint of step 2 was, not at every step
    assert probe.seen == {0: None, 1: None, 2: 2, 3: 2}

    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    last_step = train_rows[-1]["step"]
    assert last_step == 4 and report_steps(folder) == 4
    text = (folder / REPORT).read_text()
    for p in PANELS:  # DPO with validation logs every panel's metrics
        assert f"]({p.file})" in text
        assert curve_pixels(folder / p.file, C0) > 100, p.file  # the first curve is drawn
    # the training and validation losses, each on loss.png
    assert curve_pixels(folder / "loss.png", C1) > 20
    for metric in ("train/loss", "train/rewards/margin", "train/rewards/accuracy", "train/lr"):
        final = f"{train_rows[-1][metric]:.4g}"
        assert f"| {metric} | {final} | {last_step} |" in text, metric
    val = [r for r in rows if "val/loss" in r][-1]
    assert f"| val/loss | {val['val/loss']:.4g} | {val['step']} |" in text


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir) -> Path:
    """An SFT run from a pretrained (tiny, local) base model whose own card names a licence."""
    tmp = tmp_path_factory.mktemp("card")
    base = build_tiny_llama(tmp / "base")
    ModelCard("---\nlicense: mit\nlicense_notice: Built on the tiny base.\n---\n# base\n").save(
        base / "README.md"
    )
    cfg = compose_train(
        tiny_overrides(
            tmp,
            data_dir / "sft_short.jsonl",
            "sft",
            "model.init=pretrained",
            f"model.path={base}",
            "data.val_fraction=0.25",
            "trainer.max_steps=2",
            "train.checkpoint.enabled=false",
        )
    )
    run_train(cfg)
    return tmp / "sft" / "train" / "hf_model"


def test_exported_folder_has_a_card_naming_base_model_licence_data_and_settings(exported, data_dir):
    card = ModelCard.load(exported / "README.md")
    base = str(exported.parents[2] / "base")
    assert card.data.base_model == base
    # the base folder's own card names the licence and the notice it requires
    assert card.data.license == "mit" and card.data.license_notice == "Built on the tiny base."
    assert "Built on the tiny base." in card.text
    data = str(data_dir / "sft_short.jsonl")
    assert card.data.datasets == [data]
    matrix = card.data.to_dict()["matrix"]
    assert matrix["data"]["file"] == data
    assert matrix["data_counts"]["rows"] == 24
    training = matrix["training"]
    assert training["objective"] == "SFT" and training["learning_rate"] == 1e-3
    manifest = json.loads((exported.parent / "manifest.json").read_text())
    assert training["optimizer_steps"] == manifest["counts"]["steps"] == 2
    assert training["batch_size_per_device"] == 4 and training["epochs"] == 1.0
    assert "No evaluation yet" in card.text
    # SFT logs no preference rewards: no panel for them in the run's report
    assert not (exported.parent / "rewards.png").exists()
    assert (exported.parent / "loss.png").exists()


def test_evaluate_run_of_the_folder_adds_its_scores_to_the_card(exported, tmp_path):
    folder = shutil.copytree(exported, tmp_path / "hf_model")
    overrides = [
        "eval=demo",
        "logger=none",
        f"paths.runs_dir={tmp_path}",
        "eval.model.role=null",
        f"eval.model.checkpoint={folder}",
        "eval.benchmarks.alpaca_eval2.limit=3",
    ]
    cfg = compose("evaluate", [*overrides, "eval.sampling.max_new_tokens=4"])
    scores = run_evaluate(cfg, roles=Roles(cfg.llm, backends={"smollm2": ScriptedBackend()}))
    s = scores["alpaca_eval2"]
    card = ModelCard.load(folder / "README.md")
    (result,) = card.data.eval_results
    assert (result.dataset_type, result.metric_type) == ("alpaca_eval2", "win_rate")
    assert result.metric_value == pytest.approx(s["win_rate"])
    assert result.metric_args["ci95"] == pytest.approx(s["win_rate_ci95"])
    judge = json.loads((tmp_path / "default" / "evaluate" / "scores.json").read_text())["judge"]
    assert result.metric_args["n"] == 3 and result.metric_args["judge"] == judge
    assert "No evaluation yet" not in card.text
    assert f"| alpaca_eval2 | win_rate | {s['win_rate']:.4g} |" in card.text
    assert card.data.base_model == ModelCard.load(exported / "README.md").data.base_model

    # a second evaluation of the same benchmark replaces the score, not adds one
    again = compose("evaluate", [*overrides, "eval.sampling.max_new_tokens=5"])
    run_evaluate(again, roles=Roles(again.llm, backends={"smollm2": ScriptedBackend()}))
    assert len(ModelCard.load(folder / "README.md").data.eval_results) == 1
