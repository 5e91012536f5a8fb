"""Which checkpoint a training run starts from (`train.checkpoint.resume`).

    train.checkpoint.resume: auto   # this run folder's newest checkpoint, if one exists (default)
    train.checkpoint.resume: null   # start fresh (also false); this folder's checkpoints are removed
    train.checkpoint.resume: /path/to/step000200.ckpt   # that checkpoint

`auto` resumes only checkpoints written under the same train config: <stage dir>/checkpoints/
run.json records the config hash of the run that writes them. Checkpoints of another config
(or of a version that did not record one) are removed and the run starts fresh, as a rerun
with changed settings always did; the log says so.

The newest checkpoint is the one with the highest global step, read from the files (Lightning
writes `stepNNNNNN.ckpt` and then `last.ckpt`: a kill between the two leaves `last.ckpt` one
interval behind). Every checkpoint is complete or absent: Lightning writes it to a temporary
file and renames it. A sharded FSDP2 checkpoint (`trainer.fsdp.state_dict_type=sharded`) is a
folder `stepNNNNNN.ckpt/` of per-rank shards whose `meta.pt` (written last, by rank 0) holds
the step and the loop states; a folder without it is incomplete and not resumed.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from matrix.common.io import read_json, write_json

log = logging.getLogger(__name__)

MARKER = "run.json"
AUTO = ("auto", "last")  # `last`: the older name of `auto`
SHARDED_META = "meta.pt"  # a sharded checkpoint folder's metadata (Lightning's name)


@dataclass(frozen=True)
class ResumePoint:
    """Where fit starts: `path` (None: from scratch) at optimizer step `step` (0: fresh)."""

    path: Path | None
    step: int

    @property
    def fresh(self) -> bool:
        return self.path is None


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a complete sharded checkpoint folder."""
    return path.is_file() or (path / SHARDED_META).is_file()


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was written at (memory-mapped: the weights are
    not read; a sharded folder's from its metadata)."""
    if path.is_dir():
        path = path / SHARDED_META
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return int(ckpt["global_step"])


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint in `ckpt_dir` with the highest global step (`last.ckpt` on a tie)."""
    found = [p for p in ckpt_dir.glob("*.ckpt") if is_checkpoint(p)]
    if not found:
        return None
    return max(found, key=lambda p: (checkpoint_step(p), p.name == "last.ckpt"))


def _remove_checkpoints(ckpt_dir: Path, why: str, keep: Path | None = None) -> None:
    stale = sorted(p for p in ckpt_dir.glob("*.ckpt") if keep is None or p.resolve() != keep)
    if stale:
        log.warning("%s: removing %d checkpoint(s) (%s)", ckpt_dir, len(stale), why)
    for p in stale:
        if p.is_dir() and not p.is_symlink():  # a sharded checkpoint
            shutil.rmtree(p)
        else:
            p.unlink()


def resume_point(
    cfg: DictConfig, ckpt_dir: Path, config_hash: str, rank_zero: bool = True
) -> ResumePoint:
    """The checkpoint this run starts from, per `train.checkpoint.resume` (see the module doc).

    On rank zero, leaves `ckpt_dir` holding only checkpoints of this config (and a checkpoint
    named by `train.checkpoint.resume`) and records the config hash, so the checkpoints this run
    writes resume its next attempt."""
    spec = cfg.train.checkpoint.get("resume")
    fresh = spec in (None, False, "none", "null", "false")
    explicit = None if fresh or spec in AUTO else Path(str(spec)).resolve()
    marker = ckpt_dir / MARKER
    recorded = read_json(marker).get("config_hash") if marker.exists() else None
    if rank_zero and recorded != config_hash:
        why = (
            f"written with train config hash {recorded}, this run's is {config_hash}"
            if recorded
            else "no record of the config they were written with"
        )
        _remove_checkpoints(ckpt_dir, why, keep=explicit)
    if fresh:
        if rank_zero:
            _remove_checkpoints(ckpt_dir, "train.checkpoint.resume=null: starting fresh")
        point = ResumePoint(None, 0)
    elif spec in AUTO:
        path = newest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        point = ResumePoint(path, checkpoint_step(path) if path else 0)
    else:
        path = explicit
        if not is_checkpoint(path):
            raise FileNotFoundError(
                f"train.checkpoint.resume={spec} does not exist; give a .ckpt file (or a sharded "
                "checkpoint folder), `auto` (this run "
                "folder's newest checkpoint) or null (start fresh)"
            )
        point = ResumePoint(path, checkpoint_step(path))
    if rank_zero:
        write_json(marker, {"config_hash": config_hash})
    if point.path is not None:
        log.info("resuming from %s (step %d)", point.path, point.step)
    return point
