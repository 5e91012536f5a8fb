"""What SFT and DPO share: the forward pass, per-token log-probs, optimizers, grad norm."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.distributed.fsdp import FullyShardedDataParallel

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


@dataclass(frozen=True)
class RunContext:
    """What an objective may read from the run when it is built (`CausalLMModule.context`)."""

    cfg: DictConfig  # the composed config
    data: Any  # the set-up ChatDataModule (matrix.train.datamodule)
    world_size: int  # ranks of the run


def objective_class(cfg: DictConfig) -> type[CausalLMModule]:
    """The class `train.objective._target_` names (checked before training by the preflight,
    matrix.train.preflight.check_objective)."""
    from hydra.utils import get_class

    return get_class(str(cfg.train.objective._target_))


# metrics shown in Lightning's progress bar (besides being logged)
PROGRESS_BAR = ("train/loss", "train/lr", "val/loss")


class CausalLMModule(L.LightningModule):
    """Base module: owns the HF model, the optimizer config and the step metrics.

    A training objective is a subclass, named by `_target_` in conf/objective/<name>.yaml
    (`objective=<name>`, mounted at `train.objective`); the YAML's other keys are keyword
    options of its constructor. It declares the rows it trains on (`rows`: "chat", `messages`
    rows from data.sft_path; "pairs", `prompt`/`chosen`/`rejected` rows from data.dpo_path),
    and `context(run)` returns what its constructor needs from the run besides its options
    (the number of pairs, a token count). Adding an objective is one module and one YAML.
    """

    rows: ClassVar[str] = "chat"

    @classmethod
    def context(cls, run: RunContext) -> dict[str, Any]:
        """Constructor arguments from the run besides the objective's own options."""
        return {}

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: DictConfig,
        scheduler: DictConfig,
        total_steps: int,
        clip_norm: float | None = None,
    ):
        super().__init__()
        self.total_steps = total_steps
        self.clip_norm = clip_norm  # trainer.gradient_clip_val; None or 0: no clipping
        self.model = model
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.step_metrics: dict[str, float] = {}  # last micro-batch, read by StepLogger
        self.grad_norm: float | None = None
        self._val_parts: list = []  # per validation batch, reduced by validation_metrics

    def on_validation_epoch_start(self) -> None:
        self._val_parts = []

    def log_row(self, row: dict[str, float], step: int) -> None:
        """A metrics row (StepLogger's, the one metrics.jsonl gets) to Lightning's loggers and
        progress bar with `self.log`, at optimizer step `step`. `step` is logged as Lightning's
        `step` key, which its loggers take as the step (Lightning's own default during training
        is the steps before this one) and ModelCheckpoint as its `step`; StepLogger logs it
        after every micro-batch, with or without a row, so it never goes stale. From a training
        hook a row is this step's (on_step); from on_validation_epoch_end, the pass's (on_epoch).
        Values go as float64 tensors: the loggers get the numbers of metrics.jsonl unrounded."""
        on_step = self.trainer.training
        for key, value in {**row, "step": step}.items():
            self.log(
                key,
                torch.tensor(float(value), dtype=torch.float64),
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=key in PROGRESS_BAR,
                batch_size=1,
            )

    def validation_metrics(self) -> dict[str, float]:
        """Metrics over the whole validation set just evaluated (read by StepLogger)."""
        raise NotImplementedError

    def configure_optimizers(self):
        trainer = self._trainer
        precision = str(trainer.precision) if trainer is not None else "32-true"
        opt = build_optimizer(self.model, self.optimizer_cfg, precision)
        # Not trainer.estimated_stepping_batches: it iterates the train loader before a resumed
        # run restores the loader's position, which then is never restored.
        sched = build_scheduler(opt, self.scheduler_cfg, self.total_steps)
        return {"optimizer": opt, "lr_scheduler": sched}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip the total gradient norm to `clip_norm` and record the norm before clipping.

        Done here rather than by Lightning's `gradient_clip_val`, which on a GPU refuses both
        the fused AdamW (its mixed-precision plugin assumes a fused optimizer unscales
        gradients itself, even in bf16 where nothing is scaled) and norm clipping under FSDP.
        Under FSDP the root module's `clip_grad_norm_` reduces the norm over every shard, so
        the recorded norm is the whole model's, not one rank's."""
        max_norm = float(self.clip_norm) if self.clip_norm else math.inf
        trainer = self._trainer
        root = trainer.strategy.model if trainer is not None else None
        if isinstance(root, FullyShardedDataParallel):
            norm = root.clip_grad_norm_(max_norm)
        else:  # FSDP2's DTensor gradients: the norm reduces over the shards itself
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else 0.0
        self.grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def configure_model(self) -> None:
        """FSDP2 (trainer.strategy=fsdp2, matrix.train.sharding): the strategy shards the model
        here, once the process group and device mesh exist; other strategies need nothing."""
        shard = getattr(self._trainer.strategy, "shard", None) if self._trainer else None
        if shard is not None:
            shard(self.model)
