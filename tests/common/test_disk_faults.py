"""A disk that fills up, where no size-limited folder can be mounted: ENOSPC injected at the
write layer of matrix.common.io (the file objects its atomic writes and JSONL appends write
through), as a full disk does it: a short write of the bytes that still fit, then ENOSPC.

What must hold: the error names the file and the cause, the last committed file is intact
(the old state.json, the rows before the append), and a rerun once there is room leaves no
partial and no duplicate row: the same rows as a run that never hit the full disk."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import matrix.common.io as mio
from matrix.common.io import JsonlLog, StorageError, write_json
from matrix.gen.run import run_generate
from tests.doubles import SCRIPTED_ROLES, compose_generate, read_rows, scripted_backends


class FullDisk:
    """A disk with `room` bytes free, shared by every file written through
    matrix.common.io while `installed`: writes take what fits, then fail with ENOSPC. With
    `room=None` nothing fails and `written` counts the bytes (a run's size)."""

    def __init__(self, room: int | None) -> None:
        self.room = room
        self.written = 0

    def take(self, path: str, n: int) -> int:
        """How many of `n` bytes fit; raises ENOSPC when none does (as write(2) does)."""
        fits = n if self.room is None else min(n, self.room - self.written)
        if n and fits <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self.written += fits
        return fits

    @contextlib.contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[FullDisk]:
        real_open, real_fdopen = open, os.fdopen

        def open_(file, mode="r", *args, **kwargs):  # JsonlLog.append: open(path, "ab", 0)
            f = real_open(file, mode, *args, **kwargs)
            return _OnDisk(f, str(file), self) if "a" in mode or "w" in mode else f

        def fdopen(fd, mode="r", *args, encoding=None, **kwargs):  # atomic_write_text
            if "w" not in mode:
                return real_fdopen(fd, mode, *args, encoding=encoding, **kwargs)
            raw = _OnDisk(real_fdopen(fd, "wb", buffering=0), f"<fd {fd}>", self)
            return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding)

        with monkeypatch.context() as m:
            m.setattr(mio, "open", open_, raising=False)
            m.setattr(os, "fdopen", fdopen)
            yield self


class _OnDisk(io.RawIOBase):
    """A real unbuffered file whose writes go through the disk's room."""

    def __init__(self, f, path: str, disk: FullDisk) -> None:
        self.f, self.path, self.disk = f, path, disk

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = memoryview(b).cast("B")
        n = self.disk.take(self.path, len(data))
        return self.f.write(data[:n])

    def fileno(self) -> int:
        return self.f.fileno()

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.f.close()


def test_enospc_in_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    state = tmp_path / "run" / "state.json"
    write_json(state, {"rows": 2})
    before = state.read_bytes()
    with FullDisk(room=100).installed(monkeypatch), pytest.raises(StorageError) as err:
        write_json(state, {"rows": 3, "pad": "x" * 10_000})
    message = str(err.value)
    assert str(state) in message and "no space left on the device (ENOSPC)" in message
    assert "df -h" in message and "paths.runs_dir" in message
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert state.read_bytes() == before
    assert [p.name for p in state.parent.iterdir()] == ["state.json"]  # no temp file left


def test_enospc_in_an_append_cuts_the_part_of_a_row_that_fit(tmp_path, monkeypatch):
    rows = JsonlLog(tmp_path / "rows.jsonl")
    rows.append([{"i": 0}, {"i": 1}])
    before = rows.path.read_bytes()
    batch = [{"i": i, "text": "y" * 100} for i in range(2, 6)]
    # room for one row and a half: the disk takes 1.5 rows, then refuses the rest
    room = len(json.dumps(batch[0])) * 3 // 2
    with FullDisk(room).installed(monkeypatch) as disk, pytest.raises(StorageError) as err:
        rows.append(batch)
    assert disk.written > 0  # part of the batch did reach the file before ENOSPC
    assert str(rows.path) in str(err.value) and "ENOSPC" in str(err.value)
    assert rows.path.read_bytes() == before
    rows.append(batch)  # the rerun, with room: every row once
    assert rows.read() == [{"i": 0}, {"i": 1}, *batch]


TINY = [
    "generator=tiny",
    "generate.filters.near_dup_threshold=0.95",
    *SCRIPTED_ROLES,
    "generate.batch_size=2",
    "llm.cache.enabled=false",  # the stage's own checkpoint must carry the rerun
]


def _generate(root: Path, sim_dir: Path) -> None:
    run_generate(
        compose_generate(root, f"generate.simulation_dir={sim_dir}", *TINY),
        backends=scripted_backends(),
    )


def _out(root: Path) -> Path:
    return root / "runs" / "default" / "generate"


def test_generate_stopped_by_a_full_disk_reruns_to_the_same_rows(tmp_path, sim_dir, monkeypatch):
    """The generate stage on a disk that fills at 30% of what a whole run writes (in its set
    files, between two checkpoints): it stops with a StorageError naming one of its files;
    its checkpoint is whole and every set file holds its committed rows and no torn one;
    rerun with room, it ends with exactly the rows of a run that never hit the full disk,
    none twice."""
    with FullDisk(room=None).installed(monkeypatch) as whole:
        _generate(tmp_path / "whole", sim_dir)
    full = tmp_path / "full"
    out = _out(full)
    room = whole.written * 3 // 10
    with FullDisk(room).installed(monkeypatch), pytest.raises(StorageError) as err:
        _generate(full, sim_dir)
    assert str(out) in str(err.value) and "no space left on the device (ENOSPC)" in str(err.value)
    assert not (out / "manifest.json").exists()  # stopped, not finished
    committed = json.loads((out / "state.json").read_text())  # whole JSON: the old checkpoint
    for name, s in committed["sets"].items():
        path = out / "sets" / f"{name}.jsonl"
        assert JsonlLog(path).count() >= s["rows"], name
        data = path.read_bytes() if path.exists() else b""
        assert not data or data.endswith(b"\n"), f"{path}: a torn row"

    _generate(full, sim_dir)
    ref = _out(tmp_path / "whole")
    for name in ["sft.jsonl", "dpo.jsonl", *(f"sets/{p.name}" for p in (ref / "sets").iterdir())]:
        rows = read_rows(out / name)
        assert rows == read_rows(ref / name), name
        assert len({r["id"] for r in rows}) == len(rows), f"{name}: a row twice"
