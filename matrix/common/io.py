"""Files between stages: atomic writes and resumable JSONL.

Every write that replaces a file goes through a temp file + fsync + rename, so a killed
process leaves either the old file or the new one. JSONL outputs are appended row by row
and committed by a checkpoint that records the row count; on resume `JsonlLog.truncate`
drops whatever was appended after the last checkpoint (including a torn last line). Logs
without a checkpoint (evaluate's answers keyed by id, metrics.jsonl) drop a torn last line
before they are read or appended to (`JsonlLog.drop_torn_tail`), so a row half-written by a
killed process never fuses with the next one.

A write that fails because the disk is full or the folder is read-only raises `StorageError`,
whose message names the path and the fix, after undoing its own partial work: an atomic write
removes its temp file (the old file stays), an append cuts the file back to its length before
the append. So a stage stopped by a full disk keeps its last committed state and resumes from
it once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# mkstemp makes owner-only files; outputs get the mode any other file of the user gets.
_UMASK = os.umask(0)
os.umask(_UMASK)


# errno values that mean "the disk, not the data": full, over quota, read-only, not permitted.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class StorageError(OSError):
    """A write failed because the disk is full or the folder cannot be written; the message
    names the path and the fix. The file being written is as it was before the write."""

    def __str__(self) -> str:
        return str(self.strerror)


def storage_error(
    e: OSError, path: str | Path | None = None, key: str = "paths.runs_dir"
) -> StorageError | None:
    """`e` as a StorageError naming `path` (default: the path the OS names) and the config
    `key` that moves the folder, or None for an OSError that is not about disk space or write
    access."""
    if isinstance(e, StorageError):
        return e
    path = Path(path or e.filename or ".")
    folder = path if path.is_dir() else path.parent
    again = "then run the same command again: the stage resumes from its last checkpoint (intact)"
    if e.errno in DISK_FULL:
        why = (
            f"{path}: no space left on the device ({errno.errorcode[e.errno]}). Free space "
            f"there (`df -h {folder}`) or set {key} to a disk with room, {again}."
        )
    elif e.errno in NOT_WRITABLE:
        why = (
            f"{path}: cannot write, the folder is read-only or not yours "
            f"({errno.errorcode[e.errno]}: {e.strerror}). Make {folder} writable or set "
            f"{key} to a writable folder, {again}."
        )
    else:
        return None
    return StorageError(e.errno, why, str(path))


@contextlib.contextmanager
def disk_writes(path: str | Path) -> Iterator[None]:
    """Turn a full-disk or read-only OSError raised inside into a StorageError naming `path`."""
    try:
        yield
    except OSError as e:
        err = storage_error(e, path)
        if err is None or err is e:
            raise
        raise err from e


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    with disk_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | Path, torn_tail: bool = False) -> list[dict]:
    return list(iter_jsonl(path, torn_tail))


def iter_jsonl(path: str | Path, torn_tail: bool = False) -> Iterator[dict]:
    """Rows of a JSONL file (optionally .gz): the one JSONL reader (with `jsonl_lines` below,
    for callers that report bad rows themselves). A malformed line raises with its line number.

    `torn_tail=True` skips a malformed last line that lacks its newline: a write killed midway,
    or one still being written, in a file that is appended to (`JsonlLog`, metrics) and may be
    read before its writer's `drop_torn_tail`. A malformed line anywhere else still raises."""
    torn: ValueError | None = None
    for lineno, value, error in jsonl_lines(path):
        if torn is not None:
            raise torn  # not the last line after all
        if error is not None:
            torn = ValueError(f"{path}:{lineno}: {error}")
            if not torn_tail:
                raise torn
            continue
        yield value
    if torn is not None:
        if Path(path).suffix == ".gz" or _ends_with_newline(path):
            raise torn  # a whole line that is not JSON: corrupt, not torn
        log.warning("%s: skipped a torn last line (%s)", path, torn)


def _ends_with_newline(path: str | Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def jsonl_lines(
    path: str | Path, max_line_bytes: int | None = None
) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed value, None) for every non-blank line of a JSONL file (optionally
    .gz), or (line number, None, why) for a line that is not UTF-8, not JSON, or longer than
    `max_line_bytes` (such a line is skipped over, never held in memory whole)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        lineno = 0
        while raw := f.readline(max_line_bytes + 1 if max_line_bytes else -1):
            lineno += 1
            if max_line_bytes and len(raw) > max_line_bytes:
                size = len(raw)
                while not raw.endswith(b"\n") and (raw := f.readline(1 << 20)):
                    size += len(raw)
                yield lineno, None, f"line of {size} bytes is over the limit of {max_line_bytes}"
                continue
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8")), None
            except UnicodeDecodeError as e:
                yield lineno, None, f"invalid UTF-8 at byte {e.start}"
            except json.JSONDecodeError as e:
                yield lineno, None, f"not valid JSON ({e.msg})"


class JsonlLog:
    """An append-only JSONL file whose committed length is tracked by the caller's checkpoint."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with disk_writes(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.endswith(b"\n") and line.strip())

    def truncate(self, n_rows: int) -> int:
        """Keep the first `n_rows` complete rows; returns how many rows were dropped."""
        if not self.path.exists():
            if n_rows:
                raise FileNotFoundError(
                    f"{self.path}: checkpoint expects {n_rows} rows, file is gone"
                )
            return 0
        kept, offset, dropped = 0, 0, 0
        with open(self.path, "rb") as f:
            for line in f:
                if kept < n_rows and line.endswith(b"\n"):
                    kept += 1
                    offset += len(line)
                elif line.strip():
                    dropped += 1
        if kept < n_rows:
            raise ValueError(f"{self.path}: checkpoint expects {n_rows} rows, only {kept} present")
        with disk_writes(self.path), open(self.path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        return dropped

    def drop_torn_tail(self) -> int:
        """Cut a last line that lacks its newline (a write killed midway); returns the number
        of bytes cut."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:  # read-only first: a whole file is left alone
            end = f.seek(0, os.SEEK_END)
            if end == 0:
                return 0
            f.seek(end - 1)
            if f.read(1) == b"\n":
                return 0
        with disk_writes(self.path), open(self.path, "r+b") as f:
            keep, pos = 0, end
            while pos > 0:  # back to the last newline, 64 KiB at a time
                step = min(1 << 16, pos)
                f.seek(pos - step)
                newline = f.read(step).rfind(b"\n")
                if newline >= 0:
                    keep = pos - step + newline + 1
                    break
                pos -= step
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        log.warning("%s: dropped a torn last line (%d bytes)", self.path, end - keep)
        return end - keep

    def append(self, rows: Iterable[dict]) -> int:
        lines = [json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows]
        if not lines:
            return 0
        self.drop_torn_tail()
        data = "".join(lines).encode("utf-8")
        # Unbuffered, so nothing is left in a buffer to land after a failed write is undone.
        with disk_writes(self.path), open(self.path, "ab", buffering=0) as f:
            start = f.tell()
            try:
                view = memoryview(data)
                while view:
                    view = view[f.write(view) :]
                os.fsync(f.fileno())
            except OSError:
                # A full disk can take part of the rows: cut them, so the file holds whole
                # committed rows only (shrinking a file needs no free space).
                with contextlib.suppress(OSError):
                    os.ftruncate(f.fileno(), start)
                raise
        return len(lines)

    def read(self) -> list[dict]:
        """The rows written so far (a torn last line, left by a killed write, is skipped)."""
        return read_jsonl(self.path, torn_tail=True) if self.path.exists() else []


PACKAGE_PREFIX = "matrix:"


def resolve_data_path(path: str) -> Path:
    """`matrix:data/...` -> a file shipped inside the package; anything else as given."""
    if path.startswith(PACKAGE_PREFIX):
        return Path(__file__).resolve().parents[1] / path[len(PACKAGE_PREFIX) :]
    return Path(path).expanduser()


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if limit is not None and f.tell() >= limit:
                break
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
