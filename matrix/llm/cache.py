"""A persistent call cache: one SQLite file shared by every stage, run and process.

A request is keyed by the model's identity, the messages and every sampling field that
changes the answer (including the seed), so a rerun, a resumed stage or another stage asking
the same thing gets the stored completion instead of paying for it again. SQLite in WAL mode
lets several processes (e.g. submitit shards) read and write one file at once; each answer is
committed as soon as it arrives, so a killed process loses nothing it already paid for.
"""

from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from matrix.common.io import StorageError, storage_error
from matrix.common.sqlite_wal import connect_wal
from matrix.llm.protocol import Chat, Completion, Sampling

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    completion TEXT NOT NULL,
    created REAL NOT NULL
)
"""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_identity(name: str) -> str:
    """The cache's name for a model: the name, plus a fingerprint of the weights when the
    name is a local folder (a retrained `hf_model/` at the same path must not hit old answers)."""
    p = Path(name)
    if not p.is_dir():
        return name
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name == "config.json"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{name}@{h.hexdigest()[:12]}"


def request_key(model: str, chat: Chat, sampling: Sampling, occurrence: int = 0) -> str:
    """Stable hash of one request.

    `occurrence` tells apart identical sampled requests within one batch (the k-th copy of a
    prompt sampled k times is its own request); greedy requests ignore it since they are
    answered identically.
    """
    fields = asdict(sampling)
    fields["stop"] = list(sampling.stop)
    if sampling.greedy:
        # The seed and top_p do not change a greedy answer; leaving them out shares entries.
        fields.pop("seed")
        fields.pop("top_p")
        occurrence = 0
    if not sampling.logprobs:
        # requests that ask for no log-probs keep the keys they had before the field existed
        fields.pop("logprobs")
    blob = json.dumps(
        {"model": model, "messages": chat, "sampling": fields, "n": occurrence},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def batch_keys(model: str, chats: Sequence[Chat], sampling: Sampling) -> list[str]:
    seen: dict[str, int] = {}
    keys = []
    for chat in chats:
        base = request_key(model, chat, sampling)
        k = seen.get(base, 0)
        seen[base] = k + 1
        keys.append(base if k == 0 else request_key(model, chat, sampling, occurrence=k))
    return keys


class CallCache:
    """Completions by request key, in `<dir>/llm_calls.sqlite`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: backends report results from worker threads; the lock
        # serialises use of the one connection.
        self._db = connect_wal(self.path, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    @classmethod
    def in_dir(cls, directory: str | Path) -> CallCache:
        return cls(Path(directory) / "llm_calls.sqlite")

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite caps bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, completion FROM calls WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, blob in rows:
                    found[key] = Completion(**json.loads(blob))
        return found

    def put(self, key: str, completion: Completion) -> None:
        self.put_many([(key, completion)])

    def put_many(self, items: Iterable[tuple[str, Completion]]) -> None:
        now = time.time()
        rows = [
            (k, c.model, json.dumps(asdict(c), ensure_ascii=False), now)
            for k, c in items
            if c.finish_reason != "error"  # failures are retried next time, never cached
        ]
        if not rows:
            return
        with self._lock:
            try:
                self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)", rows)
                self._db.commit()
            except sqlite3.OperationalError as e:
                self._db.rollback()
                if (err := self._storage_error(e)) is None:
                    raise
                raise err from e

    def _storage_error(self, e: sqlite3.OperationalError) -> StorageError | None:
        """SQLite's "database or disk is full" / "readonly database" as a StorageError naming
        the cache file and the keys that move or disable it (the cache keeps what it had)."""
        text = str(e).lower()
        code = errno.ENOSPC if "full" in text else errno.EROFS if "readonly" in text else None
        if code is None:
            return None
        err = storage_error(OSError(code, str(e), str(self.path)), self.path, "llm.cache.dir")
        return StorageError(code, f"{err} (Or run without the cache: llm.cache.enabled=false.)")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
