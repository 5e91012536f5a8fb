"""Opening the project's SQLite caches (LLM calls, embeddings) in WAL mode from several
processes at once: shards, sweep jobs and parallel stages share one cache folder.

Switching a fresh database to WAL needs an exclusive lock. When two processes switch the same
fresh file at the same moment, SQLite answers one of them "database is locked" at once,
without waiting out the busy timeout (it would otherwise deadlock). A retry after a short
wait then finds the file already in WAL mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential


def _locked(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and "locked" in str(e)


def connect_wal(path: str | Path, timeout: float = 60, **kwargs) -> sqlite3.Connection:
    """`sqlite3.connect(path)` in WAL mode with a `timeout`-second busy timeout."""
    db = sqlite3.connect(path, timeout=timeout, **kwargs)
    for attempt in Retrying(
        retry=retry_if_exception(_locked),
        wait=wait_random_exponential(multiplier=0.02, max=1),
        stop=stop_after_delay(timeout),
        reraise=True,
    ):
        with attempt:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
    return db
