"""A published dataset on local disk -> training rows (`data.format` other than `matrix`).

`data.path` is a file or a folder; a folder is read as every data file under it in name order
(`.jsonl`, `.jsonl.gz`, `.json`, `.parquet`; hidden folders such as the `.cache/` that
`huggingface-cli download --local-dir` leaves are passed over). A `.json` file holds one
array of rows (or JSON Lines); parquet is read with pyarrow, which comes with `datasets`.

Each row goes through its format's converter (matrix.train.formats) and gets an `id`
("<dataset>-<the dataset's row id>") and `lineage` (dataset, format, file, row id), the fields
a generated row's lineage has in its place. A file whose first row does not fit the format is
not that format: that stops the run (ConfigError naming the format, its expected shape, the row
and the key), whatever `data.on_error`; a later row that does not fit is a malformed row, which
`data.on_error` skips (logged with its place) or makes fatal. `data.sample` (any format,
`sample_rows`) trains on a seeded random sample of that many rows (the paper's 10K of each
baseline), drawn after `data.limit`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.bad_rows import BadRows
from matrix.common.io import jsonl_lines
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

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def data_files(path: Path) -> list[Path]:
    """The data files of `path`: itself, or every data file under the folder, in name order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(
        f
        for f in path.rglob("*")
        if f.is_file()
        and f.name.endswith(SUFFIXES)
        and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )


def records(file: Path, max_line_bytes: int | None = None) -> Iterator[tuple[str, Any, str | None]]:
    """(where, published row, None) for each row of one file, or (where, None, why) for a line
    that is not JSON; `where` is "<line>" (JSON Lines) or "row <index>" (array, parquet)."""
    if file.name.endswith((".jsonl", ".jsonl.gz")):
        for lineno, value, error in jsonl_lines(file, max_line_bytes):
            yield str(lineno), value, error
        return
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                yield f"row {i}", value, None
                i += 1
        return
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":  # several values one after the other: JSON Lines in a .json
            raise ConfigError(f"{file}: not valid JSON ({e.msg}, line {e.lineno})") from e
        for lineno, value, error in jsonl_lines(file, max_line_bytes):
            yield str(lineno), value, error
        return
    if not isinstance(value, list):
        raise ConfigError(
            f"{file}: a .json data file holds an array of rows, got {type(value).__name__}"
        )
    for i, row in enumerate(value):
        yield f"row {i}", row, None


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
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: DictConfig) -> Source | None:
        """The source of the data block, or None for the project's own rows (format matrix)."""
        name = str(data.get("format") or NATIVE)
        if name == NATIVE:
            return None
        if name not in FORMATS:
            raise ConfigError(f"data.format={name}: use {NATIVE} or one of {', '.join(FORMATS)}")
        fields = OmegaConf.to_container(data.fields, resolve=True) if data.get("fields") else {}
        return cls(FORMATS[name], str(data.name), fields)

    def mismatch(self, where: str, e: FormatMismatch) -> str:
        return (
            f"{where}: not in the {self.format.name} format (data.format={self.format.name}, "
            f"data={self.dataset}): {e}; expected rows like {self.format.shape}"
        )

    def row(self, raw: Any, rows: str, file: Path, position: str) -> dict:
        """The training row of one published row; `position` ("<file in the folder>:<n>")
        is its id where the dataset gives none."""
        rid = row_id(self.format, raw, position)
        out = as_training_row(self.format, raw, self.fields, rows)
        lineage = {
            "dataset": self.dataset,
            "format": self.format.name,
            "file": str(file),
            "row_id": rid,
        }
        return {"id": f"{self.dataset}-{rid}", **out, "lineage": lineage}

    def load(
        self,
        path: Path,
        rows: str,
        on_error: str = "skip",
        max_line_bytes: int | None = None,
        limit: int | None = None,
    ) -> tuple[list[dict], BadRows]:
        """The training rows (kind `rows`) of every data file of `path`."""
        files = data_files(path)
        if not files:
            raise ConfigError(f"data.path={path}: no {'/'.join(SUFFIXES)} file there")
        bad = BadRows(path, on_error, "data.on_error")
        out: list[dict] = []
        seen = dataset_skips = 0
        for file in files:
            tag = "" if file == path else f"{file.relative_to(path)}:"
            for i, (where, raw, error) in enumerate(records(file, max_line_bytes)):
                seen += 1
                why = error
                if why is None:
                    try:
                        row = self.row(raw, rows, file, f"{tag}{i}")
                        why = row_problem(row, rows)
                    except SkipRow:
                        dataset_skips += 1
                        continue
                    except FormatMismatch as e:
                        if i == 0:
                            raise ConfigError(self.mismatch(f"{file}:{where}", e)) from e
                        why = str(e)
                if why:
                    bad.add(f"{tag}{where}", why)
                    continue
                out.append(row)
                if limit and len(out) >= limit:
                    break
            if limit and len(out) >= limit:
                break
        bad.summary(seen)
        if dataset_skips:
            log.info(
                "%s: %d rows the dataset marks as not to train on", self.dataset, dataset_skips
            )
        return out, bad

    def check(self, path: Path, rows: str, p: ConfigProblems, fix: str | None) -> None:
        """Before any model loads: the files exist, the format gives the objective's rows,
        `data.fields` names keys of the format, and the first row of each file fits it."""
        files = data_files(path)
        if not files:
            p.add(
                "data.path",
                f"data.path={path} (data={self.dataset}) has no {'/'.join(SUFFIXES)} file; "
                f"get it with:\n      {fix}\n    or point data.path=... at a local copy",
            )
            return
        if rows == "pairs" and self.format.rows == "chat":
            p.add(
                "data.format",
                f"data.format={self.format.name} holds conversations, not preference pairs; "
                "train it with objective=sft",
            )
        unknown = sorted(set(self.fields) - set(self.format.keys))
        if unknown:
            p.add(
                "data.fields",
                f"{unknown}: not keys of the {self.format.name} format ({', '.join(self.format.keys)})",
            )
            return
        for file in files:
            first = next(records(file), None)
            if first is None or first[2] is not None:
                p.add(
                    "data.path", f"{file}: no JSON row to read ({first[2] if first else 'empty'})"
                )
                continue
            try:
                self.row(first[1], rows, file, "0")
            except FormatMismatch as e:
                p.add("data.format", self.mismatch(f"{file}:{first[0]}", e))
            except SkipRow:
                pass
