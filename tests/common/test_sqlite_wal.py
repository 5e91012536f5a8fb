"""Several processes opening the same fresh cache at once (shards, sweep jobs, a stage and
its reference run): SQLite refuses one of two simultaneous switches to WAL at once with
"database is locked", whatever the busy timeout. Before `connect_wal` retried, this test's
race failed 6 of 120 opens with the plain `connect` + `PRAGMA journal_mode=WAL`, and the
full-disk generate test failed once in CI on the embeddings cache."""

from __future__ import annotations

import multiprocessing as mp

from matrix.llm.cache import CallCache
from matrix.llm.embeddings import Encoder

PROCESSES, ROUNDS = 6, 10


def _open(kind: str, folder: str, barrier, errors) -> None:
    barrier.wait()  # every process opens the same fresh file at the same moment
    try:
        if kind == "embeddings":
            Encoder(cache_dir=folder)
        else:
            CallCache.in_dir(folder)
    except Exception as e:  # noqa: BLE001 - reported back to the test
        errors.put(repr(e))


def test_processes_opening_one_fresh_cache_at_once_all_succeed(tmp_path):
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for kind in ("embeddings", "llm"):
        for r in range(ROUNDS):
            folder = str(tmp_path / f"{kind}{r}")
            barrier = ctx.Barrier(PROCESSES)
            procs = [
                ctx.Process(target=_open, args=(kind, folder, barrier, errors))
                for _ in range(PROCESSES)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join(120)
            assert all(p.exitcode == 0 for p in procs)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
