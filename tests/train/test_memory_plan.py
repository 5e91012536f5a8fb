"""The memory plan (matrix/train/memory_plan.py, memory_fit.py): its terms by hand, its
decisions on an injected free-memory figure, and its estimate against a real step's peak."""

from __future__ import annotations

import pytest
import torch

from matrix.train import memory_plan as mp
from matrix.train.memory import peak_bytes, reset_peak, resident_bytes, step_peak_supported
from matrix.train.memory_fit import model_shape
from matrix.train.memory_plan import Setup, Shape, decide, estimate, summary, terms

MB = 10**6
TINY = Shape(
    weight_bytes=4_000_000,
    params=1_000_000,
    trainable=1_000_000,
    trainable_bytes=4_000_000,
    layers=16,
    hidden=8,
    intermediate=16,
    kv_width=4,
    vocab=32,
)


def test_terms_match_a_hand_computation():
    s = Setup(tokens=10, checkpointing=False, runtime_bytes=123)
    layer = 8 * 8 + 3 * 4 + 4 * 16  # values a layer keeps per token: 140
    assert terms(TINY, s) == {
        "runtime": 123,
        "weights": 4_000_000,
        "gradients": 4_000_000,  # one fp32 gradient per trainable parameter
        "optimizer": 8_000_000,  # AdamW: two fp32 moments
        "activations": int(10 * 16 * layer * 4 * mp.FULL),
        "logits/loss": mp.LOSS_SLICES * 10 * 32 * 4,  # slices smaller than a chunk: the batch
        "reference": 0,
    }
    ckpt = terms(TINY, Setup(tokens=10, checkpointing=True))
    assert ckpt["activations"] == int(10 * (16 * 8 + 2 * layer) * 4 * mp.CHECKPOINTED)
    # a 2-layer model: checkpointing is counted as keeping no more than without it
    shallow = Shape(**{**TINY.__dict__, "layers": 2})
    assert terms(shallow, Setup(tokens=10, checkpointing=True))["activations"] == int(
        10 * 2 * layer * 4 * mp.FULL
    )
    # DPO's frozen copy: the weights once more; bf16-true: 2 bytes a parameter everywhere
    dpo = terms(TINY, Setup(tokens=10, checkpointing=False, reference_copy=True))
    assert dpo["reference"] == 4_000_000
    # FSDP2 shards it as the policy: 1/ranks of it a rank
    dpo = terms(TINY, Setup(tokens=10, checkpointing=False, reference_copy=True, shards=4))
    assert dpo["reference"] == dpo["weights"] == 1_000_000
    # a bf16 copy (reference_dtype auto on CUDA) beside fp32 weights, split over 4 ranks at
    # rest while the policy's SHARD_GRAD_OP counts its weights whole
    ref = Setup(
        tokens=10,
        checkpointing=False,
        reference_copy=True,
        reference_bytes_per_param=2,
        reference_shards=4,
    )
    assert terms(TINY, ref)["reference"] == 1_000_000 * 2 // 4
    bf16 = terms(
        TINY, Setup(tokens=10, checkpointing=False, activation_bytes=2, weight_bytes_per_param=2)
    )
    assert (bf16["weights"], bf16["gradients"], bf16["optimizer"]) == (2e6, 2e6, 4e6)
    assert bf16["activations"] == int(10 * 16 * layer * 2 * mp.FULL)
    # LoRA: gradients and optimizer state for the adapters only
    lora = Shape(**{**TINY.__dict__, "trainable": 1000, "trainable_bytes": 4000})
    lt = terms(lora, Setup(tokens=10, checkpointing=False))
    assert (lt["weights"], lt["gradients"], lt["optimizer"]) == (4_000_000, 4000, 8000)
    # the full-logits path keeps three fp32 copies of [tokens x vocabulary]
    full = terms(TINY, Setup(tokens=10, checkpointing=False, chunked_loss=False))
    assert full["logits/loss"] == 3 * 10 * 32 * 4


def tokens_for(rows: int) -> int:
    return 1000 * rows  # a micro-batch of `rows` units of 1,000 tokens


def plan_with(free: int, explicit=frozenset(), checkpointing=False, batch=4):
    setup = Setup(tokens=tokens_for(batch), checkpointing=checkpointing)
    return decide(TINY, setup, batch, 2, free, 0.25, tokens_for, set(explicit))


def need(checkpointing: bool, rows: int) -> int:
    """Free memory at which a plan of `rows` rows exactly fits (headroom 0.25)."""
    return (
        int(estimate(TINY, Setup(tokens=tokens_for(rows), checkpointing=checkpointing)) / 0.75) + 1
    )


@pytest.mark.parametrize(
    ("setting", "cuda", "strategy", "expected"),
    [
        ("auto", False, "auto", torch.float32),  # a CPU: the exact starting model
        ("auto", True, "auto", torch.bfloat16),
        ("auto", True, "fsdp2", torch.bfloat16),  # FSDP2 shards each parameter on its own
        ("auto", True, "fsdp", torch.float32),  # FSDP1 flattens it with the fp32 policy
        ("bfloat16", False, "auto", torch.bfloat16),
        ("float32", True, "auto", torch.float32),
    ],
)
def test_reference_dtype_auto_follows_the_device_and_the_sharding(
    setting, cuda, strategy, expected
):
    from matrix.train.reference import reference_dtype_for

    assert reference_dtype_for(setting, cuda, strategy == "fsdp") == expected


def test_a_plan_that_fits_changes_nothing():
    plan = plan_with(need(False, 4))
    assert plan.fits and plan.changes == {} and (plan.batch_size, plan.accumulate) == (4, 2)


def test_checkpointing_comes_first():
    plan = plan_with(need(True, 4))
    assert plan.fits and plan.changes == {"model.gradient_checkpointing": True}
    line = summary(plan)
    assert "model.gradient_checkpointing=true" in line and "train.memory.plan=off" in line
    assert f"{plan.first_total / 1e9:.2f} GB estimated" in line and "free" in line


def test_then_a_smaller_micro_batch_keeps_the_effective_batch():
    plan = plan_with(need(True, 2))
    assert plan.fits
    assert plan.changes == {
        "model.gradient_checkpointing": True,
        "data.batch_size": 2,
        "trainer.accumulate_grad_batches": 4,
    }
    assert plan.batch_size * plan.accumulate == 4 * 2
    assert plan.total == estimate(TINY, Setup(tokens=tokens_for(2), checkpointing=True))


def test_an_explicit_setting_is_kept_and_warned_about():
    # checkpointing set off by the user: the micro-batch is lowered instead
    plan = plan_with(need(False, 1), explicit={"model.gradient_checkpointing"})
    assert plan.fits and "model.gradient_checkpointing" not in plan.changes
    assert plan.changes["data.batch_size"] == 1 and plan.accumulate == 8
    # both set: nothing changes, the line says it will not fit and what was kept
    explicit = {"model.gradient_checkpointing", "data.batch_size"}
    plan = plan_with(need(False, 1), explicit=explicit)
    assert not plan.fits and plan.changes == {}
    line = summary(plan)
    assert "WILL NOT FIT" in line and "model.gradient_checkpointing, data.batch_size" in line
    # nothing is enough: every change made, still a warning
    plan = plan_with(10 * MB)
    assert not plan.fits and plan.batch_size == 1 and "WILL NOT FIT" in summary(plan)


def test_unknown_free_memory_changes_nothing():
    plan = plan_with(None)  # type: ignore[arg-type]
    assert plan.fits and plan.changes == {}


def step_peak(checkpointing: bool) -> None:
    """Prints (planned, measured) bytes of real training steps on CPU: a random-init Llama
    shape, a packed row of 8 sequences, the chunked loss, AdamW, two steps (so AdamW's state
    exists); measured is what a step adds to the process (its peak RSS minus the RSS before
    training), planned the plan's step terms. Run in a fresh process: memory an earlier test
    freed stays resident and would hide a step's allocations."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.attention import register_varlen
    from matrix.train.sft import batch_loss

    register_varlen()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=8,  # deep enough that checkpointing keeps less (memory_plan.py)
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        attn_implementation="sdpa_varlen",
        use_cache=False,
    )
    model = LlamaForCausalLM(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = 2048
    ids = torch.randint(0, 2048, (1, tokens))
    pos = torch.arange(256).repeat(tokens // 256).unsqueeze(0)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": pos}
    before = resident_bytes()
    measured = 0
    for _ in range(2):
        reset_peak()
        loss, _ = batch_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
        measured = max(measured, peak_bytes() - before)
    t = terms(model_shape(model), Setup(tokens=tokens, checkpointing=checkpointing))
    planned = t["gradients"] + t["optimizer"] + t["activations"] + t["logits/loss"]
    print(json.dumps([planned, measured]))


@pytest.mark.skipif(not step_peak_supported(), reason="needs Linux /proc peaks")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["full", "checkpointed"])
def test_estimate_holds_against_a_real_step_peak(checkpointing):
    """The plan's step terms against real steps' peak (`step_peak`). The plan keeps 25% of
    free memory unused (train.memory.headroom), so an estimate at least 75% of the real peak
    never runs a fitting plan out of memory; one above twice the real peak would turn on
    checkpointing (0.84x the speed) for runs that fit."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = f"from tests.train.test_memory_plan import step_peak; step_peak({checkpointing})"
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    planned, measured = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.75 * measured <= planned <= 2.0 * measured, (planned, measured)


def test_the_stage_applies_the_plan_and_keeps_the_effective_batch(tmp_path, data_dir, caplog):
    """Through the train stage: a 0.1 GB limit fits nothing, so the plan turns checkpointing
    on and trains one unit per micro-batch with 4x the accumulation: as many optimizer steps
    as 4 units per micro-batch would take, the change named in one warning and saved."""
    import json
    import logging

    from matrix.train.run import run_train

    from .conftest import compose_train, tiny_overrides

    over = ["data.packing=true", "data.batch_size=4", "train.checkpoint.enabled=false"]
    over += ["train.export=false", "train.memory.limit_gb=0.1"]
    over += ["model.config.num_hidden_layers=8"]  # deep enough for checkpointing to save
    cfg = compose_train(tiny_overrides(tmp_path, data_dir / "sft_short.jsonl", "plan", *over))
    with caplog.at_level(logging.INFO, logger="matrix.train.memory_fit"):
        manifest = run_train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory plan")]
    assert len(lines) == 1 and "data.batch_size=1" in lines[0] and "WILL NOT FIT" in lines[0]
    saved = json.loads((tmp_path / "plan" / "train" / "memory_plan.json").read_text())
    assert saved["changes"] == {
        "model.gradient_checkpointing": True,
        "data.batch_size": 1,
        "trainer.accumulate_grad_batches": 4,
    }
    units = manifest["counts"]["packed_rows"]
    assert manifest["counts"]["batches_per_epoch"] == units  # one unit per micro-batch
    assert manifest["counts"]["steps"] == -(-units // 4)  # the steps of 4 units per batch


def test_show_prints_the_table_and_trains_nothing(tmp_path, data_dir, capsys):
    from matrix.train.run import run_train

    from .conftest import compose_train, tiny_overrides

    over = ["train.memory.plan=show", "train.memory.limit_gb=64"]
    cfg = compose_train(tiny_overrides(tmp_path, data_dir / "sft_short.jsonl", "show", *over))
    assert run_train(cfg) is None
    out = capsys.readouterr().out
    for row in ("weights", "gradients", "optimizer", "activations", "logits/loss", "reference"):
        assert row in out
    assert "total (estimated peak per step)" in out and "64.00 GB" in out
    assert not (tmp_path / "show").exists()  # no stage folder: nothing trained


def test_a_resumed_run_applies_its_first_attempts_decision(tmp_path):
    """A resume must cut batches as the checkpoint's loader position counts them: the saved
    decision is applied whatever the free memory now, and the caller's config is untouched."""
    import json
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.memory_fit import SAVED, fit_memory

    changes = {
        "model.gradient_checkpointing": True,
        "data.batch_size": 2,
        "trainer.accumulate_grad_batches": 4,
    }
    (tmp_path / SAVED).write_text(json.dumps({"changes": changes}))
    cfg = OmegaConf.create(
        {
            "model": {"gradient_checkpointing": False},
            "data": {"batch_size": 4},
            "trainer": {"accumulate_grad_batches": 2},
            "train": {"memory": {"plan": "auto", "limit_gb": 1000}},
        }
    )
    dm = SimpleNamespace(batch_size=4)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    model = LlamaForCausalLM(config)
    out = fit_memory(cfg, dm, model, False, 1, 0, tmp_path, resumed=True, rank_zero=True)
    assert (out.data.batch_size, out.trainer.accumulate_grad_batches) == (2, 4)
    assert out.model.gradient_checkpointing and model.is_gradient_checkpointing
    assert dm.batch_size == 2 and cfg.data.batch_size == 4
