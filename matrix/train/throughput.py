"""FLOPs per token and model FLOPs utilisation (MFU).

Training FLOPs per token follow the PaLM appendix: 6 x (non-embedding parameters) for the
matmuls of forward + backward, plus 12 x layers x hidden x context for attention scores.
MFU = achieved FLOPs / the device's peak dense FLOPs for the training dtype (Lightning's table
of GPUs); it is undefined (None) on CPU.
"""

from __future__ import annotations

import torch


def training_flops_per_token(model: torch.nn.Module, context: float) -> float:
    config = model.config
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n)
    n_params = sum(p.numel() for p in model.parameters()) - embed
    layers = config.num_hidden_layers
    hidden = config.hidden_size
    return 6.0 * n_params + 12.0 * layers * hidden * context


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
