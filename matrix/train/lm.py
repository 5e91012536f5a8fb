"""What SFT and DPO share: the forward pass, per-token log-probs, optimizers, grad norm."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from matrix.train.optim import build_optimizer, build_scheduler
from matrix.train.tokenize import IGNORE_INDEX


def forward_logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Logits for a padded batch (attention mask) or a packed one (no mask: the model builds a
    block-diagonal causal mask from the restarting position ids)."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return out.logits


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | tokens < t) for every target position, and the mask of real targets.

    Shapes [rows, T-1]. Computed in float32: bf16 log-softmax over a 128K vocabulary loses
    the small differences DPO depends on.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = logits[:, :-1].float()
    logp = -F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(targets)
    return logp * mask, mask


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, seq_ids: torch.Tensor, n_sequences: int
) -> torch.Tensor:
    """Summed log-prob of the labelled tokens of each sequence (works for packed rows)."""
    logp, mask = token_logps(logits, labels)
    ids = seq_ids[:, 1:].clamp(min=0)
    out = torch.zeros(n_sequences, dtype=logp.dtype, device=logp.device)
    return out.index_add(0, ids[mask], logp[mask])


class CausalLMModule(L.LightningModule):
    """Base module: owns the HF model, the optimizer config and the step metrics."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: DictConfig,
        scheduler: DictConfig,
        total_steps: int,
    ):
        super().__init__()
        self.total_steps = total_steps
        self.model = model
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.step_metrics: dict[str, float] = {}  # last micro-batch, read by StepLogger
        self.grad_norm: float | None = None
        self._val_parts: list = []  # per validation batch, reduced by validation_metrics

    def on_validation_epoch_start(self) -> None:
        self._val_parts = []

    def validation_metrics(self) -> dict[str, float]:
        """Metrics over the whole validation set just evaluated (read by StepLogger)."""
        raise NotImplementedError

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.optimizer_cfg)
        # Not trainer.estimated_stepping_batches: it iterates the train loader before a resumed
        # run restores the loader's position, which then is never restored.
        sched = build_scheduler(opt, self.scheduler_cfg, self.total_steps)
        return {"optimizer": opt, "lr_scheduler": sched}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Before clipping: the norm that tells whether clipping is active.
        grads = [
            p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None
        ]
        self.grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
