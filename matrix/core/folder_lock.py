"""One writer per stage folder.

Nothing else stops two processes from writing the same stage folder (a sweep arm and a rerun,
two shells, a Slurm requeue beside the live job): their appends would interleave, one would
set the other's outputs aside, their checkpoints would overwrite each other. So a stage run
holds an advisory lock (`flock`, through filelock) on `runs/<run.name>/.locks/<folder>.lock`
from before it looks at its folder until it returns; a second process on the same folder
stops with `FolderInUse` (exit code 2), naming the holder's host, pid and start time, which
the holder records in the lock file.

The lock file sits outside the stage folder, so setting stale outputs aside (a rename of the
folder) cannot move it, and it is not one of the folder's files (input hashes, merges).
The OS releases a `flock` when its process dies however it dies (SIGKILL, a node lost); the
next run takes over the file its record is left in and logs whose lock it was. A clean exit
empties the record. A merge of shards (`python -m matrix.merge`) holds the lock of the folder
it writes, the same one an unsharded run of the stage holds. Ranks 1..n-1 of a multi-process training run never lock: rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig

from matrix.common.io import disk_writes
from matrix.core.stage import stage_dir
from matrix.core.sweep import helper_rank

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"


class FolderInUse(RuntimeError):
    """Another live process holds the folder's lock: a user error (exit code 2)."""


def lock_file(cfg: DictConfig, stage: str, shard: bool = True) -> Path:
    """`runs/<run.name>/.locks/<stage folder>.lock`; a shard's folder gets its own
    (`simulate__shards__0-of-2.lock`), so shards run side by side. `shard=False`: the lock
    of the stage's whole folder, which a merge of its shards writes."""
    run_root = Path(cfg.paths.runs_dir) / str(cfg.run.name)
    out = stage_dir(cfg, stage, shard=shard)
    rel = out.relative_to(run_root) if out.is_relative_to(run_root) else Path(out.name)
    return run_root / LOCKS_DIR / f"{'__'.join(rel.parts)}.lock"


def stage_writer(cfg: DictConfig, stage: str, shard: bool = True) -> Any:
    """The lock a run of `stage` holds on its folder while it runs (a context manager);
    the entry points take it around the stage's run function, and `python -m matrix.merge`
    around its merge (`shard=False`: the unsharded folder it writes)."""
    if helper_rank():
        return nullcontext()
    return hold_folder(stage_dir(cfg, stage, shard=shard), lock_file(cfg, stage, shard=shard))


@contextmanager
def hold_folder(folder: Path, path: Path) -> Iterator[dict]:
    """Hold `path`'s lock for writing `folder`, or raise FolderInUse naming the live holder.
    Yields the record written into the lock file (host, pid, since)."""
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started": time.time(),
        "folder": str(folder),
    }
    held: dict[str, int] = {}

    def on_acquired(fd: int) -> None:
        # The flock is ours: whoever wrote a record here has exited or lost it.
        if previous := _parse(os.pread(fd, 1 << 16, 0)):
            log.warning("%s: taking over the lock of %s", folder, _left_by(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        held["fd"] = fd

    lock = FileLock(path, timeout=0, on_acquired=on_acquired, is_singleton=False)
    try:
        with disk_writes(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
    except Timeout:
        raise FolderInUse(_busy_message(folder, path)) from None
    try:
        yield record
    finally:
        try:
            os.ftruncate(held["fd"], 0)  # a clean exit leaves no holder behind
        finally:
            lock.release()


def read_holder(path: Path) -> dict | None:
    """The record of the process holding (or last holding) the lock file, if any."""
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def _parse(raw: bytes) -> dict | None:
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) and "pid" in data else None


def _who(rec: dict) -> str:
    age = max(0, round(time.time() - float(rec.get("started", time.time()))))
    ago = f"{age} s" if age < 120 else f"{age // 60} min"
    return f"pid {rec.get('pid')} on host {rec.get('host')}, since {rec.get('since')} ({ago} ago)"


def _left_by(rec: dict) -> str:
    gone = "it no longer holds it"
    if rec.get("host") == socket.gethostname() and not _alive(int(rec.get("pid", 0))):
        gone = "that process is no longer running"
    return f"{_who(rec)}: {gone}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return pid > 0


def _busy_message(folder: Path, path: Path) -> str:
    rec = read_holder(path)
    holder = _who(rec) if rec else "another process (it is writing its record)"
    return (
        f"{folder}: another run is writing this stage folder: {holder}; lock file {path}. "
        "Two writers would interleave rows and overwrite each other's checkpoints. Wait for "
        "it to finish or stop it, or give this run another run.name."
    )
