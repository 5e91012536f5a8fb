"""FLOPs per token and model FLOPs utilisation (MFU).

The count is of the matrix multiplications a training step runs, the quantity Lightning's
`lightning.fabric.utilities.throughput.measure_flops` (torch's FlopCounterMode) reports, so
the two agree exactly on a model whose attention runs as matmuls (tests/train/
test_throughput.py holds them side by side):

- every `nn.Linear` (the output head included, also when it shares the embedding's weight,
  which a parameter count misses; LoRA's A and B are linears of their own; a quantized layer
  counts as in_features x out_features): 2 FLOPs per weight per token forward, 2 more
  backward for the gradient of its input, and 2 more for the gradient of its weight only when
  that weight trains (so LoRA is not counted as full fine-tuning);
- attention scores and the weighted sum: 4 x hidden FLOPs per token per layer per token of
  context forward, 8 backward (PaLM's 12 x layers x hidden x context);
- with LoRA and frozen embeddings, the first layer's q/k/v projections (and their LoRA A)
  read activations that need no gradient, so autograd skips their input gradient;
- DPO against a reference model adds its forward pass (adapters off, or the frozen copy).

`context` is the attention span per token: for sequences of lengths T_i, sum(T_i^2) /
sum(T_i) (a sequence of T tokens costs T^2). Element-wise work (norms, activations, softmax,
the loss) is left out, as FlopCounterMode does.
MFU = achieved FLOPs / the device's peak dense FLOPs for the training dtype (Lightning's table
of GPUs); it is undefined (None) on CPU.
"""

from __future__ import annotations

import re

import torch

_FIRST_QKV = re.compile(r"(^|\.)layers\.0\.self_attn\.(q|k|v)_proj(\.|$)")


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _weights(m: torch.nn.Linear) -> int:
    return int(m.in_features) * int(m.out_features)


def _is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter")


def linear_flops_per_token(model: torch.nn.Module, backward: bool = True) -> float:
    """Matmul FLOPs per token of every linear layer: forward, plus (backward=True) the input
    and trainable-weight gradients as autograd computes them."""
    embed = _inner(model).get_input_embeddings()
    frozen_inputs = embed is not None and not any(p.requires_grad for p in embed.parameters())
    total = 0.0
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        n = _weights(m)
        total += 2.0 * n
        if not backward:
            continue
        if not (frozen_inputs and _FIRST_QKV.search(name) and "lora_B" not in name):
            total += 2.0 * n  # gradient of the input
        if m.weight.requires_grad:
            total += 2.0 * n  # gradient of the weight
    return total


def base_linear_flops_per_token(model: torch.nn.Module) -> float:
    """Forward matmul FLOPs per token without LoRA's adapters (the DPO reference pass)."""
    return sum(
        2.0 * _weights(m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )


def attention_flops_per_token(model: torch.nn.Module, context: float, backward: bool) -> float:
    config = _inner(model).config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_layer = 4.0 * heads * head_dim * context
    return config.num_hidden_layers * per_layer * (3.0 if backward else 1.0)


def training_flops_per_token(
    model: torch.nn.Module, context: float, reference_pass: bool = False
) -> float:
    """FLOPs per trained token of one training step (forward + backward), plus a DPO
    reference model's forward pass when `reference_pass`."""
    flops = linear_flops_per_token(model) + attention_flops_per_token(model, context, True)
    if reference_pass:
        flops += base_linear_flops_per_token(model) + attention_flops_per_token(
            model, context, False
        )
    return flops


def attention_context(seq_ids: torch.Tensor) -> float:
    """sum(T_i^2) / sum(T_i) over the sequences of a batch (`seq_ids`: -1 on padding)."""
    ids = seq_ids[seq_ids >= 0]
    if ids.numel() == 0:
        return 0.0
    lengths = torch.bincount(ids).double()
    return float((lengths**2).sum() / lengths.sum())


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = (
        torch.bfloat16
        if "bf16" in precision
        else torch.float16
        if "16" in precision
        else torch.float32
    )
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * flops_per_token / peak
