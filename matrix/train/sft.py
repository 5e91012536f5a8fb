"""Supervised fine-tuning: next-token loss on assistant tokens only, token-weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matrix.train.lm import CausalLMModule, RunContext
from matrix.train.loss import fused_nll_sum, labelled_logps
from matrix.train.tokenize import IGNORE_INDEX


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over every labelled token in the batch, and how many there are,
    from full logits (the reference that `batch_loss_sum`, which training uses, must equal)."""
    targets = labels[:, 1:].reshape(-1)
    n = int((targets != IGNORE_INDEX).sum())
    total = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        targets,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, n


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over every labelled token in the batch (each token weighs the same,
    so long answers are not down-weighted as they are with a per-sequence mean)."""
    total, n = sft_loss_sum(logits, labels)
    return total / max(n, 1), n


def batch_loss_sum(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
    """`sft_loss_sum` of the model on a batch, from hidden states a slice at a time (no
    `[tokens x vocabulary]` logits; see matrix/train/loss.py), or from the fused op's summed
    loss (`model.cross_entropy=fused`)."""
    fused = fused_nll_sum(model, batch)
    if fused is not None:
        return fused
    lp = labelled_logps(model, batch)
    return -lp.logps.sum(), len(lp.logps)


def batch_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
    """`sft_loss` of the model on a batch (per-token mean), the way training computes it."""
    total, n = batch_loss_sum(model, batch)
    return total / max(n, 1), n


class SFTModule(CausalLMModule):
    """`tokens_per_batch` (labelled tokens per micro-batch, averaged over the epoch), when
    set, makes the loss token-weighted across micro-batches too: each micro-batch returns its
    summed loss over that constant instead of its own mean. Lightning divides by the
    accumulation count, so a window of k micro-batches holding about k * tokens_per_batch
    tokens gives the per-token mean of the window, and a micro-batch with few tokens no
    longer weighs as much as a full one (the same holds across DDP ranks, which average).
    The logged loss stays the micro-batch's per-token mean."""

    rows = "chat"

    def __init__(self, *args, tokens_per_batch: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_per_batch = tokens_per_batch

    @classmethod
    def context(cls, run: RunContext) -> dict:
        """`tokens_per_batch`: labelled tokens per micro-batch (epoch mean) when one optimizer
        step sums several micro-batches (accumulation or DDP ranks); None for one micro-batch
        per step, whose own per-token mean already is the step's."""
        if int(run.cfg.trainer.accumulate_grad_batches) * run.world_size <= 1:
            return {"tokens_per_batch": None}
        dm = run.data
        return {"tokens_per_batch": dm.train_labelled_tokens() / max(dm.batches_per_epoch(1), 1)}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, n = batch_loss(self.model, batch)
        self.step_metrics = {"loss": float(loss.detach()), "trained_tokens": n}
        if self.tokens_per_batch:
            return loss * (n / self.tokens_per_batch)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        total, n = batch_loss_sum(self.model, batch)
        self._val_parts.append((float(total), n))

    def validation_metrics(self) -> dict[str, float]:
        """Per-token mean over the whole validation set: summed token losses over all its
        labelled tokens (not a mean of batch means)."""
        total = sum(t for t, _ in self._val_parts)
        n = sum(k for _, k in self._val_parts)
        return {"loss": total / max(n, 1), "tokens": n}
