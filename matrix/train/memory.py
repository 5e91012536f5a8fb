"""Peak memory of each training step: process RSS on CPU, allocated memory on CUDA.

Linux keeps the process's peak resident set (VmHWM in /proc/self/status), and writing "5" to
/proc/self/clear_refs resets it, so the peak of one step is read exactly, with no sampling
thread. Elsewhere the peak is the lifetime maximum (`ru_maxrss`), which can only grow, so it
says nothing about one step: `step_peak_supported()` tells which you get.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from pathlib import Path

import lightning as L
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def step_peak_supported() -> bool:
    return sys.platform.startswith("linux") and _CLEAR_REFS.exists()


def reset_peak(device: torch.device | None = None) -> None:
    """Start a new peak window (CUDA: the device's allocator peak; CPU: the process RSS).
    Raises if /proc/self/clear_refs is there but refuses the reset: every later "step peak"
    would silently be the peak of all the steps before it."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if step_peak_supported():
        try:
            _CLEAR_REFS.write_text("5")
        except OSError as e:
            raise RuntimeError(
                f"{_CLEAR_REFS}: cannot reset the peak resident set ({e}); a step's peak "
                "memory would be the process's peak so far, hiding whether a step grows"
            ) from e


def peak_bytes(device: torch.device | None = None) -> int:
    """Peak memory since the last `reset_peak` (CUDA: allocated by torch on the device;
    CPU: resident set of the whole process)."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kb = _status_kb("VmHWM") if step_peak_supported() else None
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        if sys.platform == "darwin":
            kb //= 1024  # bytes there
    return int(kb) * 1024


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_RELEASE_ABOVE = 1 << 20


def release_freed_blocks() -> bool:
    """Make glibc give every freed block of 1 MB or more back to the OS (Linux/glibc only;
    False elsewhere).

    By default glibc raises its mmap threshold to the size of each large block freed (up to
    32 MB), so a training step's activations then come from the heap and stay resident after
    the step: on SmolLM2-135M, 1.4 GB above the live tensors after two steps, and 0.4 GB
    more at the next step's peak. Fixed thresholds keep large blocks in their own mappings,
    returned on free."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, _RELEASE_ABOVE)
            and libc.mallopt(_M_TRIM_THRESHOLD, _RELEASE_ABOVE)
        )
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


class PeakMemory(L.Callback):
    """Adds `peak_memory_gb` (the micro-batch's peak, from `peak_bytes`) to the module's
    step metrics, so StepLogger logs it as `train/peak_memory_gb` (mean over the step's
    micro-batches); `peaks` keeps every micro-batch's value in bytes. With `release`
    (`trainer.release_freed_memory`), on CPU it calls `release_freed_blocks` when training
    starts: a lower peak, paid for in page faults (every large block comes fresh from the OS;
    about 25% more CPU time per step for SmolLM2-135M, see docs/train.md)."""

    def __init__(self, release: bool = False) -> None:
        self.peaks: list[int] = []
        self.release = release

    def on_train_start(self, trainer, pl_module) -> None:
        if self.release and pl_module.device.type == "cpu":
            release_freed_blocks()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        reset_peak(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        peak = peak_bytes(pl_module.device)
        self.peaks.append(peak)
        pl_module.step_metrics["peak_memory_gb"] = peak / 2**30


_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def _cgroup_room() -> int | None:
    """Bytes the process's cgroup (v2) may still take under its memory.max, or None."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((_CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def free_bytes(device: torch.device | None = None) -> int | None:
    """Memory a training run in this process can use: on CUDA the device's free memory
    (`torch.cuda.mem_get_info`); on CPU what Linux says is available (MemAvailable, capped
    by the cgroup's memory.max) plus what this process already holds, since a plan counts
    the process's own memory (weights, runtime) too. None where it cannot be read."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        available = next(
            int(line.split()[1]) * 1024
            for line in _MEMINFO.read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
    except (OSError, StopIteration, ValueError):
        return None
    room = _cgroup_room()
    if room is not None:
        available = min(available, room)
    rss = _status_kb("VmRSS")
    return available + (rss or 0) * 1024


def resident_bytes() -> int | None:
    """This process's resident set now (Linux), or None."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024
