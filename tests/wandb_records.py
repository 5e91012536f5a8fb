"""Read an offline W&B run file (`offline-run-*/run-*.wandb`) back into wandb's own protobuf
records (`wandb.proto.wandb_internal_pb2.Record`): the records `wandb sync` uploads.

wandb 0.31 no longer ships a Python reader (`wandb.sdk.internal.datastore` was removed with
the Python backend; wandb-core writes the file). The format is LevelDB's log format with W&B's
header: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
a 7-byte header (CRC-32 of type + data, length, type: full / first / middle / last).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = _HEADER
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # the block's tail is zero padding
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero-filled rest of the last block
            return
        if pos + _HEADER + length > len(data):  # a chunk still being written
            return
        body = data[pos + _HEADER : pos + _HEADER + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, "bad checksum"
        yield kind, body
        pos += _HEADER + length


def read_records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B run file"
    records, parts = [], b""
    for kind, body in _chunks(data):
        parts = body if kind in (_FULL, _FIRST) else parts + body
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def _finished(path: Path, wait_s: float) -> list[pb.Record]:
    """A finished run's records: wandb-core writes the file from its own process and may
    still be flushing it when `run.finish()` returns, so wait for the exit record."""
    deadline = time.monotonic() + wait_s
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {wait_s}s"
        time.sleep(0.2)


def run_records(stage_dir: Path, wait_s: float = 30.0) -> list[pb.Record]:
    """The records of every finished offline run file under a stage folder's wandb/."""
    files = sorted(Path(stage_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {stage_dir}"
    return [r for f in files for r in _finished(f, wait_s)]
