"""Gradient clipping is the module's own (CausalLMModule.configure_gradient_clipping), not
Lightning's `gradient_clip_val`: on a GPU, Lightning's mixed-precision plugin refuses to clip
for the fused AdamW that `optimizer=adamw` uses there, and its FSDP plugin refuses norm
clipping. This CPU test runs the train stage with the GPU's combination (bf16 mixed precision,
a fused AdamW) and checks that every step's gradients are clipped to the configured norm."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import matrix.train.lm as lm
from matrix.train.optim import build_optimizer
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides, write_sft

CLIP = 0.05  # far below a random-init model's gradient norm, so every step clips


class StepNorms(L.Callback):
    """The gradient norm each optimizer step used (after clipping; the closure that computes
    the gradients runs inside `step`, so a post-hook sees them)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        def record(opt, *_):
            grads = [
                p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None
            ]
            self.norms.append(float(torch.stack(grads).norm()))

        trainer.optimizers[0].register_step_post_hook(record)


def fused_adamw(model, ocfg, *_precision):
    """`build_optimizer` as on a GPU: the fused AdamW (torch runs it on CPU tensors too)."""
    opt = build_optimizer(model, ocfg)
    return torch.optim.AdamW(opt.param_groups, fused=True)


@pytest.mark.parametrize("fused", [False, True])
def test_bf16_mixed_training_clips_every_step_to_the_configured_norm(tmp_path, monkeypatch, fused):
    if fused:
        monkeypatch.setattr(lm, "build_optimizer", fused_adamw)
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            write_sft(tmp_path / "sft.jsonl", 96),
            f"clip_{fused}",
            "trainer.precision=bf16-mixed",
            f"trainer.gradient_clip_val={CLIP}",
            "data.batch_size=4",
            "trainer.max_steps=3",
            "train.checkpoint.every_n_steps=0",
        )
    )
    probe = StepNorms()
    manifest = run_train(cfg, callbacks=[probe])
    assert manifest is not None and len(probe.norms) == 3
    # clip_grad_norm_ scales by max_norm / (norm + 1e-6): the clipped norm is max_norm within 1e-4
    assert all(n <= CLIP * (1 + 1e-4) for n in probe.norms), probe.norms
    logged = [r["train/grad_norm"] for r in manifest_metrics(tmp_path, f"clip_{fused}")]
    assert len(logged) == 3 and all(g > CLIP for g in logged), logged  # the norm before clipping


def manifest_metrics(runs, name):
    import json

    path = runs / name / "train" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if "train/grad_norm" in r]
