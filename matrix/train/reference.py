"""DPO's precomputed reference: log-probs of every pair under the starting model, computed once
and cached in the run folder (`train.objective.reference=precomputed`).

The cache (`<stage dir>/reference_logps.pt`) holds a `[pairs, 2]` tensor (chosen, rejected;
NaN where not computed yet) and the key it was computed for: a fingerprint of the reference
model (the `model` config block and seed, and for a local folder its files' names, sizes and
modification times) and a hash of the tokenized pairs (every pair's token ids and labels, in
example order). A run whose key matches reuses the cache; one whose key differs (another
model, changed data, another tokenizer or template) recomputes it. The cache is written as the
computation goes (every `SAVE_EVERY` batches), so a run killed while computing it resumes
from the pairs already done. A checkpoint also carries the values (the module's buffer), so a
resumed run needs neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from matrix.llm.embedded import resolve_model_path

log = logging.getLogger(__name__)

CACHE_NAME = "reference_logps.pt"
SAVE_EVERY = 50  # batches between saves while computing

# train.objective.reference_dtype -> the frozen copy's dtype (None: `reference_dtype` decides)
REFERENCE_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def reference_dtype_for(setting: str, cuda: bool, flattened: bool) -> torch.dtype:
    """The frozen reference copy's dtype for `train.objective.reference_dtype`: `auto` is
    bf16 on CUDA unless FSDP1 flattens it with the policy's fp32 parameters (`flattened`),
    else fp32 (the exact starting model on a CPU)."""
    dtype = REFERENCE_DTYPES.get(setting)
    if dtype is not None:
        return dtype
    return torch.bfloat16 if cuda and not flattened else torch.float32


def model_fingerprint(cfg: DictConfig) -> str:
    """What identifies the reference model: the model block (path, init, random config,
    dtype, LoRA), the seed a random init draws from, and a local folder's files."""
    block = OmegaConf.to_container(cfg.model, resolve=True)
    ident: dict = {"model": block, "seed": int(cfg.seed)}
    path = Path(resolve_model_path(str(cfg.model.path)))
    if path.is_dir():
        ident["files"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()
        )
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(examples: list) -> str:
    """Hash of the tokenized pairs in example order (what the cached values are indexed by)."""
    h = hashlib.sha256()
    for ex in examples:
        for seq in (ex.chosen, ex.rejected):
            h.update(json.dumps([seq.input_ids, seq.labels]).encode())
    return h.hexdigest()


class ReferenceCache:
    """The cache file of one run: `load` returns the values stored for `key` (None when there
    is no file or it was made for another key), `save` writes them atomically."""

    def __init__(self, folder: Path, key: dict[str, str]):
        self.path = Path(folder) / CACHE_NAME
        self.key = key

    def load(self, n_pairs: int) -> torch.Tensor | None:
        if not self.path.is_file():
            return None
        stored = torch.load(self.path, map_location="cpu", weights_only=True)
        if stored.get("key") != self.key or stored["logps"].shape != (n_pairs, 2):
            changed = [k for k in self.key if stored.get("key", {}).get(k) != self.key[k]]
            log.info("DPO reference cache %s is for another %s: recomputing", self.path, changed)
            return None
        return stored["logps"]

    def save(self, logps: torch.Tensor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"key": self.key, "logps": logps.detach().cpu()}, tmp)
        tmp.replace(self.path)


def fill_reference(
    ref: torch.Tensor,
    batches: list[list[list[int]]],
    logps_of: Callable[[list[list[int]]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    cache: ReferenceCache | None,
) -> int:
    """Fill the NaN rows of `ref` ([pairs, 2]) batch by batch: `logps_of(units)` gives the
    example indices, chosen and rejected log-probs of one batch of units. Batches whose pairs
    are all done already are skipped. Saves to `cache` as it goes; returns batches computed."""
    done = 0
    for units in batches:
        idx = torch.tensor([i for unit in units for i in unit])
        if not torch.isnan(ref[idx]).any():
            continue
        index, chosen, rejected = logps_of(units)
        ref[index.to(ref.device)] = torch.stack([chosen, rejected], 1).to(ref)
        done += 1
        if cache is not None and done % SAVE_EVERY == 0:
            cache.save(ref)
    if cache is not None and done:
        cache.save(ref)
    return done
