"""A published dataset -> training rows (`data.format` other than `matrix`).

`data.path` is any table `matrix.common.tables` reads: a data file (`.jsonl`, `.jsonl.gz`, a
`.json` array or JSON Lines, `.parquet`), a folder of them (what `huggingface-cli download
--local-dir` leaves; its hidden `.cache/` is passed over), a `datasets` save_to_disk folder
(`data.split`) or a dataset name in the local Hugging Face datasets cache.

Each row goes through its format's converter (matrix.train.formats), its keys looked up under
the dataset's own names (`data.columns.<format key>=<column>`), and gets an `id`
("<dataset>-<the dataset's row id>") and `lineage` (dataset, format, file, row id), the fields
a generated row's lineage has in its place. A file whose first row does not fit the format is
not that format: that stops the run (ConfigError naming the format, its expected shape, the row
and the key), whatever `data.on_error`; a later row that does not fit is a malformed row, which
`data.on_error` skips (logged with its place) or makes fatal. `data.sample` (any format,
`sample_rows`) trains on a seeded random sample of that many rows (the paper's 10K of each
baseline), drawn after `data.limit`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.bad_rows import BadRows
from matrix.common.tables import TableError, open_table
from matrix.common.validation import ConfigError, ConfigProblems
from matrix.train.examples import row_problem
from matrix.train.formats import (
    FORMATS,
    NATIVE,
    Format,
    FormatMismatch,
    SkipRow,
    as_training_row,
    row_id,
)

log = logging.getLogger(__name__)


def renamed_columns(columns: Mapping[str, str | None], keys: tuple[str, ...]) -> list[str]:
    """The `data.columns` entries that name a column for a key the format (`keys`) does not
    have; the shipped defaults (`messages: messages`, ...) rename nothing and pass."""
    return sorted(f for f, c in columns.items() if f not in keys and c not in (None, f))


def sample_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded random sample of `n` rows in their file order (data.sample); all when n is
    None or not below their number."""
    if not n or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[k] for k in keep]


@dataclass(frozen=True)
class Source:
    """How to read `data.path`: its format, the dataset's name (for lineage) and options."""

    format: Format
    dataset: str
    columns: Mapping[str, str] = field(default_factory=dict)  # format key -> dataset's key

    @classmethod
    def from_data(cls, data: DictConfig) -> Source | None:
        """The source of the data block, or None for the project's own rows (format matrix)."""
        name = str(data.get("format") or NATIVE)
        if name == NATIVE:
            return None
        if name not in FORMATS:
            raise ConfigError(f"data.format={name}: use {NATIVE} or one of {', '.join(FORMATS)}")
        columns = OmegaConf.to_container(data.columns, resolve=True) if data.get("columns") else {}
        return cls(FORMATS[name], str(data.name), {f: c for f, c in columns.items() if c})

    def mismatch(self, where: str, e: FormatMismatch) -> str:
        return (
            f"{where}: not in the {self.format.name} format (data.format={self.format.name}, "
            f"data={self.dataset}): {e}; expected rows like {self.format.shape}"
        )

    def row(self, raw: Any, rows: str, file: Path, position: str) -> dict:
        """The training row of one published row; `position` ("<file in the folder>:<n>")
        is its id where the dataset gives none."""
        rid = row_id(self.format, raw, position)
        out = as_training_row(self.format, raw, self.columns, rows)
        lineage = {
            "dataset": self.dataset,
            "format": self.format.name,
            "file": str(file),
            "row_id": rid,
        }
        return {"id": f"{self.dataset}-{rid}", **out, "lineage": lineage}

    def load(
        self,
        path: str | Path,
        rows: str,
        on_error: str = "skip",
        max_line_bytes: int | None = None,
        limit: int | None = None,
        split: str | None = None,
    ) -> tuple[list[dict], BadRows]:
        """The training rows (kind `rows`) of the table `path` names, file by file."""
        table = open_table(path, "data.path", split)
        bad = BadRows(table.path, on_error, "data.on_error")
        out: list[dict] = []
        seen = dataset_skips = 0
        for part, i, n, raw, error in table.file_rows(max_line_bytes):
            seen += 1
            why = error
            if why is None:
                tag = "" if part is table else f"{part.path.relative_to(table.path)}:"
                try:
                    row = self.row(raw, rows, part.path, f"{tag}{i}")
                    why = row_problem(row, rows)
                except SkipRow:
                    dataset_skips += 1
                    continue
                except FormatMismatch as e:
                    if i == 0:
                        where = f"{part.path}:{part.position(n)}"
                        raise ConfigError(self.mismatch(where, e)) from e
                    why = str(e)
            if why:
                bad.add(table.where(part, n), why)
                continue
            out.append(row)
            if limit and len(out) >= limit:
                break
        bad.summary(seen)
        if dataset_skips:
            log.info(
                "%s: %d rows the dataset marks as not to train on", self.dataset, dataset_skips
            )
        return out, bad

    def check(
        self, spec: str, rows: str, p: ConfigProblems, fix: str | None, split: str | None = None
    ) -> None:
        """Before any model loads: the table is there, the format gives the objective's rows,
        `data.columns` renames keys of the format, and the first row of each file fits it."""
        try:
            table = open_table(spec, "data.path", split)
        except TableError as e:
            why = str(e)
            if fix and not Path(spec).is_file():  # nothing there, or a folder without data
                what = "holds no data file" if Path(spec).exists() else "is not there"
                why = (
                    f"data.path={spec} (data={self.dataset}) {what}; get it with:\n"
                    f"      {fix}\n    or point data.path=... at a local copy"
                )
            p.add("data.path", why)
            return
        if rows == "pairs" and self.format.rows == "chat":
            p.add(
                "data.format",
                f"data.format={self.format.name} holds conversations, not preference pairs; "
                "train it with objective=sft",
            )
        unknown = renamed_columns(self.columns, self.format.keys)
        if unknown:
            p.add(
                "data.columns",
                f"{', '.join(f'data.columns.{f}' for f in unknown)}: not a key of the "
                f"{self.format.name} format ({', '.join(self.format.keys)})",
            )
            return
        for part in table.files():
            try:
                first = next(part.rows(), None)
            except TableError as e:
                p.add("data.path", str(e))
                continue
            if first is None or first[2] is not None:
                p.add(
                    "data.path", f"{part.path}: no row to read ({first[2] if first else 'empty'})"
                )
                continue
            try:
                self.row(first[1], rows, part.path, "0")
            except FormatMismatch as e:
                p.add("data.format", self.mismatch(f"{part.path}:{part.position(first[0])}", e))
            except SkipRow:
                pass
