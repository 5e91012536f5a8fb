"""Batches: padded rows or one padding-free packed row, in a reproducible, resumable order.

A *unit* is one sequence (padded mode) or several sequences packed end to end (packed mode,
best-fit-decreasing into `capacity` tokens). A padded batch holds one unit per row, right-padded
to the longest. A packed batch puts all its units' sequences end to end in ONE row (as TRL's
`padding_free` collator does), so it holds no padding at all. It has no attention mask; its
position ids restart at 0 at every sequence start, which transformers turns into a
block-diagonal causal mask (sdpa, eager, flex) or varlen kernels (flash_attention_2), and
`sdpa_varlen` into one causal SDPA call per sequence, so sequences never attend to each other.

The epoch's batch order depends only on (seed, epoch), and `BatchPlan` can start mid-epoch,
which is what makes a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from matrix.train.examples import Sequence1D
from matrix.train.tokenize import IGNORE_INDEX


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most `capacity` tokens (best-fit decreasing),
    returned fullest first.

    Deterministic: ties break on the index. Items longer than capacity get a bin of their own
    (the tokenizer already truncated them to max_seq_len, so this only happens when
    capacity < max_seq_len).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    bins.sort(key=lambda b: -sum(lengths[i] for i in b))  # stable: deterministic
    return bins


class BatchPlan(Sampler[list[int]]):
    """Yields lists of unit indices, `rows_per_batch` at a time, sharded across ranks.

    The order is a permutation seeded by (seed, epoch) of the units, cut into batches (a
    fresh batch composition every epoch).
    `state_dict` records how many batches of the current epoch were consumed so
    `load_state_dict` can skip exactly those.
    """

    def __init__(
        self,
        n_units: int,
        rows_per_batch: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n_units = n_units
        self.rows_per_batch = rows_per_batch
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        # Lightning calls `loader.batch_sampler.sampler.set_epoch(epoch)` at each epoch start;
        # pointing `sampler` at ourselves is how a batch sampler receives that call.
        self.sampler = self
        self.consumed = 0  # batches of this epoch handed to training (set by the trainer side)
        self._skip = 0

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n_units, generator=g).tolist()
        else:
            order = list(range(self.n_units))
        b = self.rows_per_batch
        batches = [order[i : i + b] for i in range(0, len(order), b)]
        # every rank needs the same number of batches or collectives hang
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank :: self.world_size][:per_rank]

    def __len__(self) -> int:
        n = -(-self.n_units // self.rows_per_batch)
        return n // self.world_size if self.world_size > 1 else n

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        self.consumed = skip
        yield from self._batches()[skip:]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0
            # a restored skip counts batches of the checkpoint's epoch: a checkpoint written
            # at an epoch's last batch resumes at the next epoch, from its first batch
            self._skip = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._skip = int(state["consumed"])
        self.consumed = self._skip


class ResumableLoader(DataLoader):
    """A DataLoader Lightning recognises as stateful, so its position goes into checkpoints."""

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


def collate_rows(rows: Sequence[Sequence[Sequence1D]], packed: bool, pad_id: int) -> dict:
    """Tensors for a batch of the sequences in `rows`, in order.

    Padded (`packed=False`): row r is `rows[r]`, which must hold one sequence, right-padded
    to the longest row. Packed: every sequence of every row goes end to end into one row of
    `sum of lengths` tokens (padding-free; `rows` only says how they were packed).

    Keys: input_ids, labels, position_ids, seq_ids (index of the sequence each token belongs
    to, in order of appearance; -1 on padding), attention_mask (padded mode only: packed rows
    must leave it None so the model derives the block mask from position ids), n_sequences,
    real_tokens and padded_tokens (for padding efficiency: equal when packed).
    """
    if not packed and any(len(r) != 1 for r in rows):
        raise ValueError("padded batches hold exactly one sequence per row")
    if packed:
        rows = [[seq for row in rows for seq in row]]
    width = max(sum(len(s) for s in r) for r in rows)
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    seq_ids = torch.full((n_rows, width), -1, dtype=torch.long)
    attention = torch.zeros((n_rows, width), dtype=torch.long)
    k = 0
    real = 0
    for r, row in enumerate(rows):
        t = 0
        for seq in row:
            n = len(seq)
            input_ids[r, t : t + n] = torch.tensor(seq.input_ids)
            labels[r, t : t + n] = torch.tensor(seq.labels)
            position_ids[r, t : t + n] = torch.arange(n)
            seq_ids[r, t : t + n] = k
            attention[r, t : t + n] = 1
            t += n
            k += 1
        real += t
        # trailing padding is its own segment (positions from 0), never part of a sequence
        position_ids[r, t:] = torch.arange(width - t)
    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "seq_ids": seq_ids,
        "n_sequences": k,
        "real_tokens": real,
        "padded_tokens": n_rows * width,
    }
    if not packed:
        batch["attention_mask"] = attention
    return batch
