"""Optimizer and LR schedule from `cfg.optimizer` / `cfg.scheduler`."""

from __future__ import annotations

import importlib.util
import math

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices only: decaying norms and biases pulls them toward 0 for no benefit.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, ocfg: DictConfig, precision: str = "32-true"
) -> torch.optim.Optimizer:
    groups = param_groups(model, float(ocfg.weight_decay))
    kw = dict(lr=float(ocfg.lr), betas=tuple(ocfg.betas), eps=float(ocfg.eps))
    if ocfg.name == "adamw":
        on_cuda = any(p.is_cuda for g in groups for p in g["params"])
        # Not under fp16 loss scaling: a fused AdamW unscales inside its own step, after the
        # module has clipped, so the clipping would see scaled gradients.
        fp16 = precision.startswith("16")
        fused = bool(ocfg.get("fused", True)) and on_cuda and not fp16
        return torch.optim.AdamW(groups, fused=fused, **kw)
    if ocfg.name == "adamw_8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError(
                "optimizer=adamw_8bit needs bitsandbytes (`pip install bitsandbytes`, CUDA only); "
                "use optimizer=adamw otherwise"
            )
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    raise ValueError(f"optimizer.name={ocfg.name!r}; known: adamw, adamw_8bit")


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 0, then cosine from 1 down to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, scfg: DictConfig, total_steps: int) -> dict:
    if scfg.name != "cosine":
        raise ValueError(f"scheduler.name={scfg.name!r}; known: cosine")
    warmup = scfg.get("warmup_steps")
    if warmup is None:
        warmup = math.ceil(float(scfg.warmup_ratio) * total_steps)
    min_ratio = float(scfg.min_lr_ratio)
    sched = LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, int(warmup), total_steps, min_ratio)
    )
    return {"scheduler": sched, "interval": "step", "frequency": 1}
