"""LightningDataModule for SFT and DPO: read rows, tokenize once, serve batches.

Batches are padded (one sequence per row, right padding, attention mask) or packed
(`data.packing=true`: `data.batch_size` packed units of at most `data.pack_length` tokens,
all put end to end in one padding-free row, position ids restarting per sequence). The loss is the same either way; packing only removes the compute
spent on padding. DPO keeps each pair's chosen and rejected answers next to each other, so
sequence 2k of a batch is a chosen answer and 2k+1 its rejected one.

`data.val_fraction` > 0 holds out a validation split of the tokenized rows (`split_rows`):
chosen by a permutation seeded by `seed` over the row positions after tokenization and
filtering, so the same data and seed always give the same split, a resumed run included.
Validation units are packed (or not) like training units and served in a fixed order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from matrix.common.io import resolve_data_path
from matrix.common.progress import track
from matrix.train.batching import BatchPlan, ResumableLoader, collate_rows, pack_best_fit
from matrix.train.examples import (
    ROW_KINDS,
    PreferencePair,
    TokenStats,
    load_rows,
    tokenize_dpo,
    tokenize_sft,
)
from matrix.train.source_files import Source, sample_rows
from matrix.train.tokenize import IGNORE_INDEX

log = logging.getLogger(__name__)


# Offsets the split's seed from the batch order's, so the two permutations are unrelated.
_SPLIT_SEED_OFFSET = 7_919


def split_rows(
    n: int, val_fraction: float, val_max_rows: int | None, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) row positions, each ascending, disjoint, together range(n).

    The validation split is round(val_fraction * n) rows (at least 1 when val_fraction > 0),
    at most val_max_rows, taken from a permutation of range(n) seeded by `seed`.
    """
    if not val_fraction:
        return list(range(n)), []
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction={val_fraction}; use 0 (no validation) up to < 1")
    n_val = max(1, round(val_fraction * n))
    if val_max_rows is not None:
        n_val = min(n_val, int(val_max_rows))
    if n_val >= n:
        raise ValueError(
            f"data.val_fraction={val_fraction} leaves no training rows out of {n}; "
            "lower data.val_fraction or data.val_max_rows"
        )
    g = torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_SEED_OFFSET)
    val = sorted(torch.randperm(n, generator=g)[:n_val].tolist())
    held = set(val)
    return [i for i in range(n) if i not in held], val


def data_path(cfg: DictConfig) -> str:
    """The table this run trains on (a file, a save_to_disk folder or a cached dataset's name,
    `matrix.common.tables`): `data.path` if set, else the default file of the rows the
    objective trains on (data.sft_path for chats, data.dpo_path for pairs)."""
    if cfg.data.get("path"):  # `matrix:data/...`: a file shipped in the package
        return str(resolve_data_path(str(cfg.data.path)))
    return str(cfg.data.sft_path if objective_rows(cfg) == "chat" else cfg.data.dpo_path)


def objective_rows(cfg: DictConfig) -> str:
    """ "chat" or "pairs": the rows `train.objective` trains on (its class's `rows`)."""
    from matrix.train.lm import objective_class

    return objective_class(cfg).rows


class ChatDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | Path,
        tokenizer,
        rows: str,
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
        val_fraction: float = 0.0,
        val_max_rows: int | None = None,
        split: str | None = None,
        columns: dict[str, str | None] | None = None,
        source: Source | None = None,
        sample: int | None = None,
    ):
        super().__init__()
        if rows not in ROW_KINDS:
            raise ValueError(f"rows={rows!r}; an objective trains on {' or '.join(ROW_KINDS)}")
        self.path = path  # a file, a save_to_disk folder or a cached dataset's name
        self.split = split  # a DatasetDict's split (data.split; null: train)
        self.columns = columns or {}  # data.columns: our field -> the table's column
        self.tokenizer = tokenizer
        self.rows = rows  # "chat": `messages` rows; "pairs": prompt/chosen/rejected
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
        self.val_fraction = val_fraction
        self.val_max_rows = val_max_rows
        self.source = source  # a published dataset's format (data.format); None: our rows
        self.sample = sample  # train on a seeded random sample of this many rows
        self.examples: list | None = None  # every kept row, training and validation
        self.train_ids: list[int] = []
        self.val_ids: list[int] = []
        self.units: list[list[int]] = []  # training units (lists of example positions)
        self.val_units: list[list[int]] = []
        self.stats = TokenStats()
        self.skipped: list[str] = []  # "file:line: why" of every malformed row skipped
        self._loader: ResumableLoader | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, tokenizer) -> ChatDataModule:
        d = cfg.data
        return cls(
            path=data_path(cfg),
            tokenizer=tokenizer,
            rows=objective_rows(cfg),
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
            val_fraction=float(d.get("val_fraction") or 0.0),
            val_max_rows=d.get("val_max_rows"),
            split=d.get("split"),
            columns=dict(d.get("columns") or {}),
            source=Source.from_data(d),
            sample=d.get("sample"),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.examples is not None:
            return
        if self.source is None:
            rows, bad = load_rows(
                self.path,
                self.rows,
                self.on_error,
                self.max_line_bytes,
                self.limit,
                self.split,
                self.columns,
            )
        else:
            rows, bad = self.source.load(
                self.path, self.rows, self.on_error, self.max_line_bytes, self.limit, self.split
            )
        rows = sample_rows(rows, self.sample, self.seed)
        tokenize = tokenize_sft if self.rows == "chat" else tokenize_dpo
        rows = track(rows, "tokenizing", "train")
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
        self.train_ids, self.val_ids = split_rows(
            len(self), self.val_fraction, self.val_max_rows, self.seed
        )
        self.units = self.make_units(self.train_ids)
        self.val_units = self.make_units(self.val_ids)
        log.info(
            "%s data: %d of %d rows (%d held out for validation), %d tokens, %d rows per batch%s",
            self.rows,
            self.stats.kept,
            self.stats.rows,
            len(self.val_ids),
            self.stats.tokens,
            self.batch_size,
            f", packed into {len(self.units)} rows of <= {self.pack_length}"
            if self.packing
            else "",
        )

    def make_units(self, ids: list[int]) -> list[list[int]]:
        """What fills each batch row: one example, or (packing) several packed together."""
        if not self.packing:
            return [[i] for i in ids]
        bins = pack_best_fit([self.length(i) for i in ids], self.pack_length)
        return [[ids[k] for k in b] for b in bins]

    def __len__(self) -> int:
        return len(self.examples or [])

    def train_labelled_tokens(self) -> int:
        """Tokens carrying loss in the training rows (validation rows left out)."""
        held_out = sum(
            sum(1 for x in seq.labels if x != IGNORE_INDEX) for seq in self.sequences(self.val_ids)
        )
        return self.stats.trained_tokens - held_out

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
        """The batch of training units `unit_ids`."""
        return self.collate_units([self.units[u] for u in unit_ids])

    def collate_units(self, units: list[list[int]]) -> dict:
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
            # packed units are batched like padded ones (a fresh composition every epoch):
            # a packed batch is one padding-free row, so its units need not match in length
            plan = BatchPlan(len(self.units), self.batch_size, self.seed, self.shuffle, rank, world)
            self._loader = ResumableLoader(
                list(range(len(self.units))),
                batch_sampler=plan,
                collate_fn=self.collate,
                num_workers=self.num_workers,
            )
        return self._loader

    def val_dataloader(self) -> DataLoader | list:
        """The validation units in a fixed order, the whole split on every rank (so sharded
        models run the same number of forward passes everywhere); [] = no validation."""
        self.setup()
        if not self.val_units:
            return []
        return DataLoader(
            self.val_units,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collate_units,
            num_workers=self.num_workers,
            # a private generator: starting this loader must not draw from the global RNG,
            # which training (dropout) continues from
            generator=torch.Generator().manual_seed(self.seed),
        )

    def batches_per_epoch(self, world_size: int = 1) -> int:
        n = -(-len(self.units) // self.batch_size)
        return n // world_size if world_size > 1 else n
