"""Supervised fine-tuning: next-token loss on assistant tokens only, token-weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matrix.chat import IGNORE_INDEX
from matrix.train.lm import CausalLMModule, forward_logits


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over every labelled token in the batch (each token weighs the same,
    so long answers are not down-weighted as they are with a per-sequence mean)."""
    targets = labels[:, 1:].reshape(-1)
    n = int((targets != IGNORE_INDEX).sum())
    total = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        targets,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / max(n, 1), n


class SFTModule(CausalLMModule):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, n = sft_loss(forward_logits(self.model, batch), batch["labels"])
        self.step_metrics = {"loss": float(loss.detach()), "trained_tokens": n}
        return loss
