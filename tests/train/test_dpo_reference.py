"""DPO's reference without a second fp32 model: log-probs precomputed once (equal to the live
reference's, cached in the run folder, reused by a rerun that was cut short, recomputed for
other data), and a bf16 frozen copy."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from matrix.common.io import read_jsonl
from matrix.train.dpo import DPOModule, pair_logps
from matrix.train.models import build_model
from matrix.train.reference import CACHE_NAME
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides, write_dpo

STEPS = 4


def dpo_config(tmp_path, data, name: str, *extra: str):
    return compose_train(
        tiny_overrides(
            tmp_path,
            data,
            name,
            "objective=dpo",
            "data.batch_size=2",
            f"trainer.max_steps={STEPS}",
            "optimizer.lr=3e-3",
            "train.checkpoint.enabled=false",
            "train.export=false",
            *extra,
        )
    )


def losses(tmp_path, name: str) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(tmp_path / name / "train" / "metrics.jsonl")]


def cached_counts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reference log-probs of" in r.getMessage()]


def test_precomputed_reference_trains_as_the_live_one(tmp_path, data_dir):
    """Same pairs, same steps: the precomputed reference gives the live frozen copy's losses.
    The two differ only in how pairs are batched for the reference pass (fp32 summation
    order, 1e-6 of a log-prob); 1e-4 relative still fails for a reference of the wrong pair
    or a policy that moved before the pass (steps after the first move the loss by 1e-2)."""
    data = data_dir / "dpo.jsonl"
    run_train(dpo_config(tmp_path, data, "live", "train.objective.reference=model"))
    run_train(dpo_config(tmp_path, data, "pre", "train.objective.reference=precomputed"))
    live, pre = losses(tmp_path, "live"), losses(tmp_path, "pre")
    assert len(live) == len(pre) == STEPS
    assert pre[0] == pytest.approx(math.log(2), abs=1e-5)
    assert pre == pytest.approx(live, rel=1e-4)
    assert abs(live[-1] - live[0]) > 1e-2  # the steps compared did move the loss


def test_the_cache_is_reused_by_a_cut_short_run_and_not_for_other_data(tmp_path, data_dir, caplog):
    data = data_dir / "dpo.jsonl"
    cfg = dpo_config(tmp_path, data, "pre", "train.objective.reference=precomputed")
    cache = tmp_path / "pre" / "train" / CACHE_NAME
    with caplog.at_level(logging.INFO, logger="matrix.train.dpo"):
        run_train(cfg)
        stored = torch.load(cache, weights_only=True)
        full = stored["logps"].clone()
        assert full.shape == (32, 2) and bool(torch.isfinite(full).all())
        # a run killed while computing the reference: half of the pairs were saved
        stored["logps"][16:] = float("nan")
        torch.save(stored, cache)
        caplog.clear()
        run_train(cfg)
        assert cached_counts(caplog) == ["DPO: reference log-probs of 32 pairs, 16 cached"]
        torch.testing.assert_close(torch.load(cache, weights_only=True)["logps"], full)
        # another data set in a folder holding this cache: recomputed, not reused
        other = write_dpo(tmp_path / "other.jsonl", 32, seed=7)
        moved = dpo_config(tmp_path, other, "other", "train.objective.reference=precomputed")
        target = tmp_path / "other" / "train" / CACHE_NAME
        target.parent.mkdir(parents=True)
        target.write_bytes(cache.read_bytes())
        caplog.clear()
        run_train(moved)
    assert cached_counts(caplog) == ["DPO: reference log-probs of 32 pairs, 0 cached"]
    renewed = torch.load(target, weights_only=True)
    assert renewed["key"]["data"] != stored["key"]["data"]
    assert renewed["key"]["model"] == stored["key"]["model"]
    assert not torch.allclose(renewed["logps"], full)


@pytest.fixture(scope="module")
def pair_batch(tokenizer, tmp_path_factory):
    from matrix.train.batching import collate_rows
    from matrix.train.examples import tokenize_dpo

    path = write_dpo(tmp_path_factory.mktemp("pairs") / "dpo.jsonl", 6, seed=3)
    pairs, _ = tokenize_dpo(tokenizer, read_jsonl(path), max_length=256)
    seqs = [s for p in pairs for s in (p.chosen, p.rejected)]
    return collate_rows([seqs], packed=True, pad_id=tokenizer.pad_token_id)


@pytest.mark.parametrize(
    ("asked", "dtype"), [("bfloat16", torch.bfloat16), ("auto", torch.float32)]
)
def test_reference_copy_dtype(tokenizer, pair_batch, asked, dtype):
    """`reference_dtype=bfloat16` halves the frozen copy, whose log-probs stay within bf16's
    precision of the fp32 model's (8 mantissa bits: 0.4% a rounding, a few along the path:
    2%); `auto` on a CPU keeps fp32, the exact starting model. The rotary frequencies stay
    fp32 either way."""
    cfg = compose_train(["model=tiny_debug", "objective=dpo"])
    model = build_model(cfg.model, tokenizer, "sdpa", seed=0)
    module = DPOModule(model, cfg.optimizer, cfg.scheduler, 1, reference_dtype=asked)
    module._cast_reference(torch.device("cpu"))
    ref = module.ref_model
    assert {p.dtype for p in ref.parameters()} == {dtype}
    assert all(b.dtype == torch.float32 for n, b in ref.named_buffers() if "inv_freq" in n)
    with torch.no_grad():
        want = torch.cat(pair_logps(model.eval(), pair_batch))
        got = torch.cat(pair_logps(ref, pair_batch))
    assert got.dtype == torch.float32
    if dtype == torch.float32:
        torch.testing.assert_close(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=2e-2, atol=0.0)
        assert not torch.equal(got, want)  # it did run in bf16


def test_an_unknown_reference_dtype_is_refused(tokenizer):
    cfg = compose_train(["model=tiny_debug", "objective=dpo"])
    model = build_model(cfg.model, tokenizer, "sdpa", seed=0)
    with pytest.raises(ValueError, match="reference_dtype"):
        DPOModule(model, cfg.optimizer, cfg.scheduler, 1, reference_dtype="float16")
