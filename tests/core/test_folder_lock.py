"""One writer per stage folder (matrix.core.folder_lock), with real processes: a second run on
a folder a live process holds exits 2 naming the holder (host, pid, since when) and writes
nothing; a killed holder's lock is taken over, with a log line naming it."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from matrix.core.folder_lock import FolderInUse, lock_file, read_holder, stage_writer

ROOT = Path(__file__).resolve().parents[2]

# The lock entry the stage scripts and the pipeline take, in a process of its own that holds
# it until told to exit (a line on stdin) or killed.
HOLDER = """
import sys
from omegaconf import OmegaConf
from matrix.core.folder_lock import stage_writer
cfg = OmegaConf.create({"paths": {"runs_dir": sys.argv[1]}, "run": {"name": "r"}})
with stage_writer(cfg, "simulate"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _cfg(runs: Path, **extra) -> OmegaConf:
    return OmegaConf.create({"paths": {"runs_dir": str(runs)}, "run": {"name": "r"}, **extra})


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MATRIX_NO_PROGRESS": "1"}


def _start_holder(runs: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(runs)],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held", "the holder did not take the lock"
    return proc


def _simulate(runs: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "simulate.py"), "debug=tiny", f"paths.runs_dir={runs}"]
    return subprocess.run(
        [*cmd, "run.name=r", "logger=none", *extra],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """The folder's files with their sizes and times, leaving out hydra/ (each command's
    own log folder, which Hydra writes before any matrix code runs)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] != "hydra"
    }


def _wait_for_record(path: Path, pid: int, proc: subprocess.Popen, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while (read_holder(path) or {}).get("pid") != pid:
        assert proc.poll() is None, f"the stage exited ({proc.returncode}) before its lock"
        assert time.monotonic() < deadline, f"{path}: no record of pid {pid}"
        time.sleep(0.05)


def test_a_second_stage_run_exits_2_naming_the_live_writer(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        done = _simulate(tmp_path)
    finally:
        holder.communicate("\n", timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert f"pid {holder.pid} on host {socket.gethostname()}, since " in err, err[-3000:]
    assert "another run is writing this stage folder" in err
    assert str(tmp_path / "r" / ".locks" / "simulate.lock") in err
    assert "Traceback" not in err
    # it stopped before touching the folder (beside Hydra's own log folder): no outputs
    assert _files(tmp_path / "r" / "simulate") == {}
    # the holder's clean exit left no holder behind: the next run takes it without a word
    assert holder.returncode == 0
    assert read_holder(tmp_path / "r" / ".locks" / "simulate.lock") is None


def test_a_real_stage_holds_its_folder_against_a_second_run(tmp_path):
    """Both writers are simulate.py: the first is frozen (SIGSTOP) while it holds its lock;
    the second exits 2 naming it and leaves the first one's folder as it was. Killed, the
    first one's lock is taken over by the next writer, which logs whose lock it was."""
    lock = tmp_path / "r" / ".locks" / "simulate.lock"
    # the first is frozen before its model loads, the second stops at the lock
    model = [f"paths.cache_dir={tmp_path}/cache"]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "simulate.py"), "debug=tiny", f"paths.runs_dir={tmp_path}"]
        + ["run.name=r", "logger=none", *model],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_record(lock, first.pid, first)
        first.send_signal(signal.SIGSTOP)
        folder = tmp_path / "r" / "simulate"
        before = _files(folder)
        second = _simulate(tmp_path, *model)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert _files(folder) == before
    finally:
        first.kill()
        first.wait(timeout=60)
    assert read_holder(lock)["pid"] == first.pid  # SIGKILL: the record stays, the flock not


def test_a_killed_holders_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
    holder = _start_holder(tmp_path)
    holder.kill()
    holder.wait(timeout=60)
    path = lock_file(_cfg(tmp_path), "simulate")
    assert read_holder(path)["pid"] == holder.pid  # left behind by the killed process
    with (
        caplog.at_level(logging.WARNING, "matrix.core.folder_lock"),
        stage_writer(_cfg(tmp_path), "simulate") as record,
    ):
        assert record["pid"] == os.getpid() == read_holder(path)["pid"]
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(taken) == 1, caplog.text
    assert f"pid {holder.pid} on host {socket.gethostname()}" in taken[0]
    assert "no longer running" in taken[0]
    assert read_holder(path) is None  # released cleanly


FORKING_HOLDER = """
import os, sys, time
from omegaconf import OmegaConf
from matrix.core.folder_lock import stage_writer
cfg = OmegaConf.create({"paths": {"runs_dir": sys.argv[1]}, "run": {"name": "r"}})
ready = os.path.join(sys.argv[1], "worker-ready")
with stage_writer(cfg, "simulate"):
    child = os.fork()  # a worker: it shares the lock until it exits
    if child == 0:
        # fork has returned here, so its at-fork hooks have run in this process
        open(ready, "w").close()
        time.sleep(600)
        os._exit(0)
    while not os.path.exists(ready):  # the worker is running (under load it may start late)
        time.sleep(0.01)
    print(child, flush=True)
    sys.stdin.readline()
"""


def test_a_worker_outliving_its_killed_parent_does_not_keep_the_lock(tmp_path, caplog):
    """A forked child (a data-loader worker) would share its parent's flock; filelock closes
    the inherited descriptor in the child, so a parent SIGKILLed while its worker lives on
    leaves the folder free: the next writer takes it over at once."""
    parent = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, str(tmp_path)],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait(timeout=60)
        os.kill(child, 0)  # the worker is still alive
        with (
            caplog.at_level(logging.WARNING, "matrix.core.folder_lock"),
            stage_writer(_cfg(tmp_path), "simulate") as record,
        ):
            assert record["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)
    assert f"taking over the lock of pid {parent.pid} on host" in caplog.text


def test_a_cleanly_released_lock_is_taken_without_a_takeover(tmp_path, caplog):
    holder = _start_holder(tmp_path)
    holder.communicate("\n", timeout=60)
    with (
        caplog.at_level(logging.WARNING, "matrix.core.folder_lock"),
        stage_writer(_cfg(tmp_path), "simulate"),
    ):
        pass
    assert "taking over" not in caplog.text


def test_the_lock_is_per_folder_and_outside_it(tmp_path):
    """Shards and pipeline steps (run.stage_dirs) get a lock each, so they run side by side;
    the lock file is not inside the folder, so setting it aside cannot move the lock."""
    shard = {"shard": {"index": 1, "count": 2}}
    paths = {
        lock_file(_cfg(tmp_path), "simulate"),
        lock_file(_cfg(tmp_path, **shard), "simulate"),
        lock_file(_cfg(tmp_path, run={"name": "r", "stage_dirs": {"train": "train_sft"}}), "train"),
        lock_file(_cfg(tmp_path), "train"),
    }
    assert {p.name for p in paths} == {
        "simulate.lock",
        "simulate__shards__1-of-2.lock",
        "train_sft.lock",
        "train.lock",
    }
    assert all(p.parent == tmp_path / "r" / ".locks" for p in paths)
    with (
        stage_writer(_cfg(tmp_path), "simulate"),
        stage_writer(_cfg(tmp_path, **shard), "simulate"),
    ):
        holder = json.loads(lock_file(_cfg(tmp_path, **shard), "simulate").read_text())
        assert holder["folder"] == str(tmp_path / "r" / "simulate" / "shards" / "1-of-2")


def test_in_one_process_a_second_writer_is_refused_too(tmp_path):
    with (
        stage_writer(_cfg(tmp_path), "generate"),
        pytest.raises(FolderInUse, match=f"pid {os.getpid()} on host"),
        stage_writer(_cfg(tmp_path), "generate"),
    ):
        pass


def test_helper_ranks_of_a_training_run_take_no_lock(tmp_path, monkeypatch):
    """Rank 0 writes the folder; ranks 1..n-1 run the same command beside it."""
    with stage_writer(_cfg(tmp_path), "train"):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with stage_writer(_cfg(tmp_path), "train"):
            pass


def test_a_merge_holds_the_folder_it_writes(tmp_path):
    """`python -m matrix.merge` writes the stage's whole folder: it takes that folder's lock,
    the one an unsharded run of the stage holds, and exits 2 naming a live holder before it
    reads a shard; the shards' own locks stay apart from it."""
    shards = _cfg(tmp_path, shard={"index": 0, "count": 2})
    assert lock_file(shards, "simulate", shard=False) == lock_file(_cfg(tmp_path), "simulate")
    assert lock_file(shards, "simulate") != lock_file(_cfg(tmp_path), "simulate")
    holder = _start_holder(tmp_path)  # holds runs/r/.locks/simulate.lock
    try:
        done = subprocess.run(
            [sys.executable, "-m", "matrix.merge", "simulate", "debug=tiny"]
            + [f"paths.runs_dir={tmp_path}", "run.name=r", "logger=none", "shard.count=2"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.communicate("\n", timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"pid {holder.pid} on host {socket.gethostname()}" in done.stderr, done.stderr[-3000:]
    assert "no shard folders" not in done.stderr  # refused at the lock, before any shard check
    assert "Traceback" not in done.stderr
