"""Training's progress display: one task per epoch counting optimizer steps, with the loss
and the learning rate beside it, drawn by matrix.common.progress (rich bars in a terminal,
plain lines in a log) on rank zero only. `trainer.progress_bar: true` puts it in the fit."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from rich.progress import Progress, TaskID

from matrix.common.progress import progress


class StageProgressBar(ProgressBar):
    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._epoch_start = 0

    def disable(self) -> None:  # Lightning disables it on ranks other than zero
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            self._bar = progress("train")
            self._bar.start()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is None:
            return
        self._epoch_start = trainer.global_step
        epochs = trainer.max_epochs if trainer.max_steps <= 0 and trainer.max_epochs else None
        name = f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        self._task = self._bar.add_task(name, total=self._steps_this_epoch(trainer), info="")

    def _steps_this_epoch(self, trainer: L.Trainer) -> int | None:
        """Optimizer steps in this epoch: the epoch's batches over the accumulation, capped by
        trainer.max_steps (None when the loader has no length)."""
        batches = trainer.num_training_batches
        if batches == float("inf"):
            return None
        steps = math.ceil(batches / trainer.accumulate_grad_batches)
        if trainer.max_steps > 0:
            steps = min(steps, trainer.max_steps - trainer.global_step)
        return steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self._bar is None or self._task is None:
            return
        metrics = self.get_metrics(trainer, pl_module)
        info = " ".join(
            f"{key.split('/')[-1]}={float(metrics[key]):.4g}"
            for key in ("train/loss", "train/lr")
            if key in metrics
        )
        self._bar.update(self._task, completed=trainer.global_step - self._epoch_start, info=info)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is None or self._task is None:
            return
        done = trainer.global_step - self._epoch_start  # an epoch cut short ends here too
        self._bar.update(self._task, total=done, completed=done)
        self._task = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
