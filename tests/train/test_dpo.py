"""DPO learns a toy preference (chosen answers start 'yes', rejected ones 'no')."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from matrix.common.io import read_jsonl
from matrix.train.dpo import dpo_loss
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides


def test_dpo_loss_is_log2_at_the_reference_and_falls_with_the_margin():
    zero = torch.zeros(4)
    loss, m = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2))
    assert m["rewards/accuracy"] == 0.0
    better, m = dpo_loss(zero + 5, zero - 5, zero, zero, beta=0.1)
    assert float(better) < math.log(2) and m["rewards/accuracy"] == 1.0
    assert m["rewards/margin"] == pytest.approx(1.0)


@pytest.mark.parametrize("reference,packing", [("model", "true"), ("precomputed", "false")])
def test_dpo_learns_the_preference(tmp_path, data_dir, reference, packing):
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "dpo.jsonl",
            "dpo",
            "objective=dpo",
            f"train.objective.reference={reference}",
            f"data.packing={packing}",
            "data.batch_size=2",
            "trainer.max_epochs=3",
            "trainer.max_steps=6",
            "optimizer.lr=3e-3",
            "train.checkpoint.every_n_steps=0",
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = run_train(cfg)
    # the frozen reference copy is in eval mode on purpose: no warning about it
    assert not [w for w in caught if "in eval mode" in str(w.message)], caught
    rows = read_jsonl(tmp_path / "dpo" / "train" / "metrics.jsonl")
    assert manifest["counts"]["rows_kept"] == 32 and len(rows) == manifest["counts"]["steps"]
    # step 1: the policy is the reference, so the loss is exactly log 2
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["train/rewards/accuracy"] == 0.0
    last = rows[-2:]
    assert sum(r["train/loss"] for r in last) / 2 < 0.62
    assert sum(r["train/rewards/accuracy"] for r in last) / 2 > 0.75
    assert all(r["train/rewards/margin"] > 0 for r in last)
