"""LightningDataModule for SFT and DPO: read rows, tokenize once, serve batches.

Batches are padded (one sequence per row, right padding, attention mask) or packed
(`data.packing=true`: several sequences per row, no padding inside a row, position ids
restarting per sequence). The loss is the same either way; packing only removes the compute
spent on padding. DPO keeps each pair's chosen and rejected answers next to each other, so
sequence 2k of a batch is a chosen answer and 2k+1 its rejected one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from matrix.train.batching import BatchPlan, ResumableLoader, collate_rows, pack_best_fit
from matrix.train.examples import (
    PreferencePair,
    TokenStats,
    load_rows,
    tokenize_dpo,
    tokenize_sft,
)

log = logging.getLogger(__name__)


def data_path(cfg: DictConfig) -> str:
    """The file this run trains on: `data.path` if set, else the objective's default file."""
    if cfg.data.get("path"):
        return str(cfg.data.path)
    return str(cfg.data.sft_path if cfg.objective == "sft" else cfg.data.dpo_path)


class ChatDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | Path,
        tokenizer,
        objective: str,
        max_seq_len: int,
        batch_size: int,
        packing: bool,
        pack_length: int | None = None,
        limit: int | None = None,
        on_error: str = "skip",
        max_line_bytes: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ):
        super().__init__()
        if objective not in ("sft", "dpo"):
            raise ValueError(f"objective={objective!r}; choose sft or dpo")
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.objective = objective
        self.max_seq_len = max_seq_len
        self.batch_size = batch_size
        self.packing = packing
        self.pack_length = pack_length or max_seq_len
        self.limit = limit
        self.on_error = on_error
        self.max_line_bytes = max_line_bytes
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.examples: list | None = None
        self.units: list[list[int]] = []
        self.stats = TokenStats()
        self.skipped: list[str] = []  # "file:line: why" of every malformed row skipped
        self._loader: ResumableLoader | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, tokenizer) -> ChatDataModule:
        d = cfg.data
        return cls(
            path=data_path(cfg),
            tokenizer=tokenizer,
            objective=str(cfg.objective),
            max_seq_len=int(d.max_seq_len),
            batch_size=int(d.batch_size),
            packing=bool(d.packing),
            pack_length=d.get("pack_length"),
            limit=d.get("limit"),
            on_error=str(d.get("on_error", "skip")),
            max_line_bytes=d.get("max_line_bytes"),
            seed=int(cfg.seed),
            shuffle=bool(d.get("shuffle", True)),
            num_workers=int(d.get("num_workers", 0)),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.examples is not None:
            return
        rows, bad = load_rows(
            self.path, self.objective, self.on_error, self.max_line_bytes, self.limit
        )
        tokenize = tokenize_sft if self.objective == "sft" else tokenize_dpo
        self.examples, self.stats = tokenize(self.tokenizer, rows, self.max_seq_len)
        self.stats.rows += len(bad.skipped)
        self.stats.skipped_malformed += len(bad.skipped)
        self.skipped = bad.skipped
        if not self.examples:
            raise ValueError(
                f"{self.path}: no trainable rows out of {self.stats.rows} "
                f"({self.stats.as_counts()}); check the file and data.max_seq_len"
            )
        if self.stats.truncated_assistant_turns:
            log.warning(
                "%d assistant turns did not fit data.max_seq_len=%d and carry no loss",
                self.stats.truncated_assistant_turns,
                self.max_seq_len,
            )
        if self.packing:
            self.units = pack_best_fit([self.length(i) for i in range(len(self))], self.pack_length)
        else:
            self.units = [[i] for i in range(len(self))]
        log.info(
            "%s data: %d of %d rows, %d tokens, %d rows per batch%s",
            self.objective,
            self.stats.kept,
            self.stats.rows,
            self.stats.tokens,
            self.batch_size,
            f", packed into {len(self.units)} rows of <= {self.pack_length}"
            if self.packing
            else "",
        )

    def __len__(self) -> int:
        return len(self.examples or [])

    def length(self, i: int) -> int:
        ex = self.examples[i]
        return len(ex.chosen) + len(ex.rejected) if isinstance(ex, PreferencePair) else len(ex)

    def sequences(self, unit: list[int]) -> list:
        out = []
        for i in unit:
            ex = self.examples[i]
            out.extend([ex.chosen, ex.rejected] if isinstance(ex, PreferencePair) else [ex])
        return out

    def collate(self, unit_ids: list[int]) -> dict:
        units = [self.units[u] for u in unit_ids]
        if self.packing:
            rows = [self.sequences(unit) for unit in units]
        else:  # one sequence per row; a DPO pair fills two rows
            rows = [[s] for unit in units for s in self.sequences(unit)]
        batch = collate_rows(rows, packed=self.packing, pad_id=self.tokenizer.pad_token_id)
        batch["example_index"] = torch.tensor([i for unit in units for i in unit])
        return batch

    def train_dataloader(self) -> ResumableLoader:
        if self._loader is None:
            self.setup()
            rank, world = 0, 1
            if self.trainer is not None:
                rank, world = self.trainer.global_rank, self.trainer.world_size
            fixed = None
            if self.packing:
                # bins come fullest first; batching neighbours keeps the rows of a batch
                # about the same length, so padding them to the longest costs little
                b = self.batch_size
                fixed = [
                    list(range(i, min(i + b, len(self.units))))
                    for i in range(0, len(self.units), b)
                ]
            plan = BatchPlan(
                len(self.units), self.batch_size, self.seed, self.shuffle, rank, world, fixed
            )
            self._loader = ResumableLoader(
                list(range(len(self.units))),
                batch_sampler=plan,
                collate_fn=self.collate,
                num_workers=self.num_workers,
            )
        return self._loader

    def batches_per_epoch(self, world_size: int = 1) -> int:
        n = -(-len(self.units) // self.batch_size)
        return n // world_size if world_size > 1 else n
