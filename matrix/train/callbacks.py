"""Lightning callbacks: step metrics to metrics.jsonl and Lightning's loggers, exact-resume
state."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import defaultdict

import lightning as L
import numpy as np
import torch

from matrix.core.stage import StageRun
from matrix.train.compiled import compile_seconds
from matrix.train.throughput import attention_context, mfu, peak_flops, training_flops_per_token

log = logging.getLogger(__name__)


class LoaderPosition(L.Callback):
    """Tells the batch plan how many batches of the epoch were trained on.

    The plan itself cannot know: Lightning fetches one batch ahead. Set at batch start, so a
    checkpoint written at that batch's end counts it.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        trainer.train_dataloader.batch_sampler.consumed = batch_idx + 1


class RNGState(L.Callback):
    """Saves and restores Python, NumPy and torch RNG states, so dropout and any sampling after
    a resume draw the same numbers as the uninterrupted run."""

    def state_dict(self) -> dict:
        # Tensors and plain tuples only, so checkpoints load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class StepLogger(L.Callback):
    """The one collector of training metrics. Per optimizer step: loss (and DPO rewards)
    averaged over the accumulated micro-batches, lr, grad norm, tokens/s, padding efficiency
    and MFU, and `compile_s` on a step where torch.compile ran (its seconds are not counted in
    the step time). After each validation pass: the module's metrics over the whole validation set as
    `val/*`, a row of its own at the current step. Each row goes to metrics.jsonl (StageRun.log,
    rank 0) and to Lightning's loggers and progress bar (the module's `log_row`, self.log).
    `wandb_via_lightning`: the stage's W&B run gets the rows from Lightning's WandbLogger, so
    StageRun.log writes metrics.jsonl only (else it logs them to that run too, as before).
    `tokens_seen` is saved in checkpoints, so it runs on across a resume."""

    def __init__(
        self,
        run: StageRun | None,
        every_n_steps: int = 1,
        precision: str = "32-true",
        wandb_via_lightning: bool = False,
    ):
        self.run = run
        self.every = max(1, every_n_steps)
        self.precision = precision
        self.wandb_via_lightning = wandb_via_lightning
        self.history: list[dict] = []  # every logged row, also used by tests and the summary
        self.val_history: list[dict] = []  # every validation row
        self.tokens_seen = 0
        self._last_step = 0
        self._lr = 0.0
        self._reset()

    def state_dict(self) -> dict:
        # saved in every checkpoint: a resumed run counts tokens on from there
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict) -> None:
        self.tokens_seen = int(state["tokens_seen"])

    def resume_from(self, rows: list[dict]) -> None:
        """The rows an earlier attempt logged up to the checkpoint this run resumes from
        (kept in metrics.jsonl), so the summary and the final validation see them."""
        for r in rows:
            row = {k: v for k, v in r.items() if k != "time"}
            if any(k.startswith("train/") for k in row):
                self.history.append(row)
            if any(k.startswith("val/") for k in row):
                self.val_history.append(row)

    def _reset(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._micro = 0
        self._real = 0
        self._padded = 0
        self._seqs = 0
        self._context = 0.0  # sum over micro-batches of attention_context x real tokens
        self._t0 = time.perf_counter()
        self._compile0 = compile_seconds()

    def on_train_start(self, trainer, pl_module) -> None:
        self._peak = peak_flops(pl_module.device, self.precision)
        self._world = trainer.world_size
        self._last_step = trainer.global_step
        self._reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the lr this step applies

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        for k, v in pl_module.step_metrics.items():
            self._sums[k] += float(v)
        self._micro += 1
        self._real += int(batch["real_tokens"])
        self._padded += int(batch["padded_tokens"])
        self._seqs += int(batch["n_sequences"])
        self._context += attention_context(batch["seq_ids"]) * int(batch["real_tokens"])
        self.tokens_seen += int(batch["real_tokens"])
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step
        if not stepped or step % self.every:
            pl_module.log_row({}, step)  # Lightning's `step` stays current (see log_row)
            return
        # torch.compile's time in this step (model.compile=layers) is reported on its own
        # and left out of the step time, so tokens/s and MFU are the compiled code's speed
        compiled = compile_seconds() - self._compile0
        if compiled > 0:
            log.info("compile: %.1f s during step %d", compiled, step)
        elapsed = max(time.perf_counter() - self._t0 - compiled, 1e-9)
        tokens_per_s = self._real / elapsed
        context = self._context / max(self._real, 1)
        reference = getattr(pl_module, "reference", None) == "model"  # DPO's extra forward
        fpt = training_flops_per_token(pl_module.model, context, reference_pass=reference)
        row = {f"train/{k}": v for k, v in self._rank_means(trainer, pl_module).items()}
        row.update(
            {
                "train/lr": self._lr,
                "train/grad_norm": pl_module.grad_norm,
                "train/tokens_per_s": tokens_per_s * self._world,
                "train/tokens_per_s_per_device": tokens_per_s,
                "train/padding_efficiency": self._real / max(self._padded, 1),
                "train/mfu": mfu(tokens_per_s, fpt, self._peak),
                "train/epoch": trainer.current_epoch,
                "train/tokens_seen": self.tokens_seen,
                "train/compile_s": compiled if compiled > 0 else None,
            }
        )
        row = {k: v for k, v in row.items() if v is not None}
        self.history.append({"step": step, **row})
        self._emit(trainer, pl_module, row, step)
        self._reset()

    def _rank_means(self, trainer, pl_module) -> dict[str, float]:
        """The step's metrics, each a mean over its micro-batches on every rank (one
        all-reduce: with data parallel the step's loss is all ranks' micro-batches', as with
        one process accumulating them; every rank runs as many micro-batches a step)."""
        keys = sorted(self._sums)
        means = torch.tensor(
            [self._sums[k] / self._micro for k in keys],
            dtype=torch.float64,
            device=pl_module.device,
        )
        if trainer.world_size > 1:
            means = trainer.strategy.reduce(means, reduce_op="mean")
        return dict(zip(keys, means.tolist(), strict=True))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row = {f"val/{k}": v for k, v in pl_module.validation_metrics().items()}
        step = trainer.global_step
        self.val_history.append({"step": step, **row})
        self._emit(trainer, pl_module, row, step)

    def _emit(self, trainer, pl_module, row: dict, step: int) -> None:
        """A row to Lightning's loggers (every rank; they write on rank 0) and metrics.jsonl."""
        pl_module.log_row(row, step)
        if self.run is not None and trainer.is_global_zero:
            # StageRun.log's row; its W&B call left out when Lightning's logger feeds that run
            run = (
                dataclasses.replace(self.run, wandb_run=None)
                if self.wandb_via_lightning
                else self.run
            )
            run.log(row, step=step)
