"""Optimizer and LR schedule from `cfg.optimizer` / `cfg.scheduler`, each a component named by
`_target_` (conf/optimizer/, conf/scheduler/; checked by matrix.train.components)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf
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


def _options(block: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(block, resolve=True)
    return {k: v for k, v in data.items() if not str(k).startswith("_")}


def build_optimizer(
    model: torch.nn.Module, ocfg: DictConfig, precision: str = "32-true"
) -> torch.optim.Optimizer:
    """`ocfg._target_` (a torch.optim.Optimizer class) over the model's parameter groups, with
    the block's other keys as its options."""
    options = _options(ocfg)
    groups = param_groups(model, float(options.pop("weight_decay", 0.0)))
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    if "fused" in options:
        on_cuda = any(p.is_cuda for g in groups for p in g["params"])
        # Not under fp16 loss scaling: a fused AdamW unscales inside its own step, after the
        # module has clipped, so the clipping would see scaled gradients.
        fp16 = precision.startswith("16")
        options["fused"] = bool(options["fused"]) and on_cuda and not fp16
    return get_class(str(ocfg._target_))(groups, **options)


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 0, then cosine from 1 down to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float = 0.03,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup (`warmup_steps`, else `warmup_ratio` of the steps), then cosine decay."""
    warmup = warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * total_steps)
    return LambdaLR(
        optimizer,
        lambda s: cosine_with_warmup(s, int(warmup), total_steps, float(min_lr_ratio)),
    )


def build_scheduler(optimizer: torch.optim.Optimizer, scfg: DictConfig, total_steps: int) -> dict:
    """`scfg._target_` called with the optimizer (and `total_steps`, when it takes it), stepped
    once per optimizer step."""
    fn = get_method(str(scfg._target_))
    options = _options(scfg)
    if "total_steps" in inspect.signature(fn).parameters:
        options["total_steps"] = total_steps
    return {"scheduler": fn(optimizer, **options), "interval": "step", "frequency": 1}
