"""model.compile=layers: every decoder layer compiled with torch.compile, the training math
unchanged (the losses of a few steps equal the eager run's), compile time reported apart."""

from __future__ import annotations

import pytest

from matrix.common.io import read_jsonl
from matrix.core.config_check import config_problems
from matrix.train import compiled
from matrix.train.compiled import compile_layers, decoder_layers
from matrix.train.models import build_model
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides

STEPS = 3


def train_losses(tmp_path, data_dir, name: str, *extra: str) -> list[dict]:
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "sft.jsonl",
            name,
            "objective=sft",
            f"trainer.max_steps={STEPS}",
            "train.checkpoint.enabled=false",
            "train.export=false",
            *extra,
        )
    )
    run_train(cfg)
    return read_jsonl(tmp_path / name / "train" / "metrics.jsonl")


def compiled_matches_eager(tmp_path, data_dir, rtol: float, *extra: str) -> None:
    eager = train_losses(tmp_path, data_dir, "eager", *extra)
    done = train_losses(tmp_path, data_dir, "compiled", "model.compile=layers", *extra)
    assert len(done) == len(eager) == STEPS
    for a, b in zip(done, eager, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=rtol)
    # the first step compiled, and its seconds are reported on their own
    assert done[0]["train/compile_s"] > 0 and "train/compile_s" not in eager[0]


def test_compiled_layers_train_as_eager_ones(tmp_path, data_dir, monkeypatch):
    """Through the train stage, with dynamo and AOTAutograd's graphs run by the eager
    backend (no code generation, so it is fast on a CPU): the compiled graphs compute the same
    ops, so the losses agree to fp32 rounding (1e-5 relative; a changed graph, a lost residual
    or mask, moves them by 1e-2 or more). With activation checkpointing, as the GPU runs: each
    compiled layer runs again inside the backward pass."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    compiled_matches_eager(tmp_path, data_dir, 1e-5, "model.gradient_checkpointing=true")


@pytest.mark.slow
def test_inductor_compiled_layers_train_as_eager_ones(tmp_path, data_dir):
    """The real backend (inductor, C++ kernels on a CPU): its fused kernels reassociate the
    reductions (RMSNorm, softmax), 1e-7 relative each in fp32, amplified over 2 layers and 3
    optimizer steps; 1e-4 relative still catches any change of the math."""
    compiled_matches_eager(tmp_path, data_dir, rtol=1e-4)


def test_every_decoder_layer_is_compiled_and_the_key_is_checked(tokenizer):
    cfg = compose_train(["model=tiny_debug", "model.compile=layers", "model.lora.enabled=true"])
    config_problems(cfg, "train").raise_if_any("train")
    model = build_model(cfg.model, tokenizer, "sdpa", seed=0)
    layers = decoder_layers(model)
    assert len(layers) == cfg.model.config.num_hidden_layers  # found through the LoRA wrapper
    assert all(layer._compiled_call_impl is not None for layer in layers)
    bad = compose_train(["model=tiny_debug", "model.compile=model"])
    assert [k for k, _ in config_problems(bad, "train").items] == ["model.compile"]


def test_a_model_without_layer_classes_is_refused():
    import torch

    with pytest.raises(ValueError, match="model.compile=layers"):
        compile_layers(torch.nn.Linear(2, 2))
