"""The held-out validation split: disjoint from training, deterministic, capped; its SFT loss is
the per-token mean over the whole split; runs log val/* rows and put them in the manifest."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from matrix.common.io import read_json, read_jsonl
from matrix.train.callbacks import StepLogger
from matrix.train.datamodule import ChatDataModule, split_rows
from matrix.train.models import build_model
from matrix.train.run import run_train
from matrix.train.sft import SFTModule
from matrix.train.tokenize import IGNORE_INDEX

from .conftest import compose_train, tiny_overrides


def test_split_is_disjoint_deterministic_and_capped():
    train, val = split_rows(100, 0.1, None, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == list(range(100))
    assert split_rows(100, 0.1, None, seed=0) == (train, val)
    assert split_rows(100, 0.1, None, seed=1)[1] != val
    assert val != list(range(90, 100))  # drawn from the whole file, not its tail
    assert len(split_rows(100, 0.5, 3, seed=0)[1]) == 3  # val_max_rows caps it
    assert split_rows(100, 0.0, 3, seed=0) == (list(range(100)), [])
    assert len(split_rows(5, 0.01, None, seed=0)[1]) == 1  # a fraction > 0 holds out >= 1 row
    with pytest.raises(ValueError, match="data.val_fraction"):
        split_rows(1, 0.5, None, seed=0)


def datamodule(tokenizer, path, packing: bool, **kwargs) -> ChatDataModule:
    dm = ChatDataModule(
        path, tokenizer, "chat", max_seq_len=256, batch_size=3, packing=packing, **kwargs
    )
    dm.setup()
    return dm


@pytest.mark.parametrize("packing", [False, True])
def test_datamodule_serves_disjoint_splits_in_a_fixed_order(tokenizer, data_dir, packing):
    dm = datamodule(tokenizer, data_dir / "sft.jsonl", packing, val_fraction=0.25, seed=3)
    assert len(dm.val_ids) == 12 and len(dm.train_ids) == 36
    assert not set(dm.val_ids) & set(dm.train_ids)
    assert sorted(i for u in dm.units for i in u) == dm.train_ids
    assert sorted(i for u in dm.val_units for i in u) == dm.val_ids
    if packing:
        assert len(dm.val_units) < len(dm.val_ids)  # packed like the training rows
    again = datamodule(tokenizer, data_dir / "sft.jsonl", packing, val_fraction=0.25, seed=3)
    assert again.val_ids == dm.val_ids  # the same data and seed, the same split
    first = [b["example_index"].tolist() for b in dm.val_dataloader()]
    assert first == [b["example_index"].tolist() for b in dm.val_dataloader()]
    assert [i for b in first for i in b] == [i for u in dm.val_units for i in u]  # no shuffle
    train = {i for b in dm.train_dataloader() for i in b["example_index"].tolist()}
    assert train == set(dm.train_ids)


@pytest.mark.parametrize("packing", [False, True])
def test_sft_validation_loss_is_the_token_weighted_mean(tokenizer, data_dir, packing):
    dm = datamodule(tokenizer, data_dir / "sft.jsonl", packing, val_fraction=0.25, seed=1)
    cfg = compose_train(["model=tiny_debug"])
    model = build_model(cfg.model, tokenizer, "sdpa", seed=0)
    module = SFTModule(model, cfg.optimizer, cfg.scheduler, total_steps=1)
    logger = StepLogger(None)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[logger],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(module, datamodule=dm, verbose=False)
    [row] = logger.val_history

    # by hand: every validation row alone, summed token losses over all labelled tokens
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in dm.val_ids:
            seq = dm.examples[i]
            logits = model(input_ids=torch.tensor([seq.input_ids])).logits[0, :-1]
            targets = torch.tensor(seq.labels[1:])
            total += float(F.cross_entropy(logits, targets, reduction="sum"))
            n += int((targets != IGNORE_INDEX).sum())
    assert row["val/tokens"] == n
    assert row["val/loss"] == pytest.approx(total / n, rel=1e-5)
    assert row["step"] == 0


def test_sft_run_logs_val_loss_and_puts_it_in_the_manifest(tmp_path, data_dir):
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "sft_short.jsonl",
            "val",
            "data.packing=false",
            "data.batch_size=4",
            "data.val_fraction=0.25",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "train.checkpoint.every_n_steps=0",
        )
    )
    manifest = run_train(cfg)
    rows = read_jsonl(tmp_path / "val" / "train" / "metrics.jsonl")
    val = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(math.isfinite(r["val/loss"]) and r["val/loss"] > 0 for r in val)
    assert all("train/loss" not in r for r in val)
    assert len([r for r in rows if "train/loss" in r]) == 4
    assert manifest["counts"]["validation_rows"] == 6
    assert manifest["final_metrics"]["val/loss"] == val[-1]["val/loss"]
    assert read_json(tmp_path / "val" / "train" / "manifest.json")["final_metrics"]["step"] == 4


@pytest.mark.parametrize("reference", ["model", "precomputed"])
def test_dpo_run_logs_val_rewards_accuracy(tmp_path, data_dir, reference):
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "dpo.jsonl",
            "dpo",
            "objective=dpo",
            f"train.objective.reference={reference}",
            "data.batch_size=4",
            "data.val_fraction=0.25",
            "trainer.max_steps=3",
            "optimizer.lr=3e-3",
            "train.checkpoint.every_n_steps=0",
        )
    )
    manifest = run_train(cfg)
    rows = read_jsonl(tmp_path / "dpo" / "train" / "metrics.jsonl")
    val = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in val] == [3]  # max_steps ends mid-epoch: one final validation
    [last] = val
    assert last["val/pairs"] == 8 == manifest["counts"]["validation_rows"]
    assert 0.0 <= last["val/rewards/accuracy"] <= 1.0
    assert math.isfinite(last["val/rewards/margin"]) and math.isfinite(last["val/loss"])
    assert manifest["final_metrics"]["val/rewards/accuracy"] == last["val/rewards/accuracy"]


def test_preflight_rejects_bad_validation_keys(data_dir):
    from matrix.common.validation import ConfigError
    from matrix.core.config_check import check_stage

    cfg = compose_train(
        [
            "model=tiny_debug",
            f"data.path={data_dir / 'sft.jsonl'}",
            "data.val_fraction=1.5",
            "data.val_max_rows=0",
        ]
    )
    with pytest.raises(ConfigError) as e:
        check_stage(cfg, "train")
    assert "data.val_fraction: 1.5 is not a number in [0, 1]" in str(e.value)
    assert "data.val_max_rows: 0 is not an integer >= 1" in str(e.value)


def test_train_labelled_tokens_leave_the_validation_rows_out(tokenizer, data_dir):
    dm = datamodule(tokenizer, data_dir / "sft.jsonl", False, val_fraction=0.25)
    by_row = [sum(x != IGNORE_INDEX for x in dm.examples[i].labels) for i in range(len(dm))]
    assert dm.train_labelled_tokens() == sum(by_row[i] for i in dm.train_ids)
    assert sum(by_row) == dm.stats.trained_tokens
