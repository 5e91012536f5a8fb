"""Tables of rows as people have them: the one reader of user-supplied row files.

A table is named by one string (`data.path`, `eval.benchmarks.custom.path`) and is one of:

- a JSONL file (`.jsonl`, `.json`, `.jsonl.gz`): read line by line (`matrix.common.io`),
- a JSON array of rows (a `.json` file whose first character is `[`),
- a parquet file (`.parquet`): read a batch of rows at a time,
- a folder of such files (what `huggingface-cli download --local-dir` leaves): every data file
  under it in name order, hidden folders (its `.cache/`) passed over,
- a folder written by `datasets.Dataset.save_to_disk` (or a `DatasetDict`'s: the split named
  by the caller, "train" by default),
- the name of a dataset in the local Hugging Face datasets cache (`owner/name`), loaded with
  `datasets.load_dataset(name)` from the cache only; with `HF_HUB_OFFLINE=1` (the Makefile's
  default) nothing is downloaded, and a name that is not cached stops with how to get it.

Every reader yields (row number, value, None) or (row number, None, why), the shape of
`matrix.common.io.jsonl_lines`, so a loader reports bad rows the same way whatever the format
(`matrix.common.bad_rows`); row numbers are 1-based (a JSONL file's line numbers), and
`Table.position` writes one as an error message shows it (the line, or `row <index>` counted
from 0 as datasets and pandas show rows). A folder's rows come file by file (`Table.files`).
Anything else stops with `TableError`, naming the file and the accepted formats.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix.common.io import jsonl_lines, resolve_data_path
from matrix.common.validation import ConfigError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
DATA_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
ACCEPTED = (
    "a JSONL file (.jsonl, .jsonl.gz), a parquet file (.parquet), a JSON array (.json), a "
    "folder of such files, a folder written by datasets' save_to_disk, or the name of a dataset in the local Hugging Face datasets cache "
    "(owner/name)"
)
# Files `save_to_disk` writes: a Dataset's state, a DatasetDict's split list.
_DISK_MARKERS = ("state.json", "dataset_dict.json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BATCH_ROWS = 1024


class TableError(ConfigError):
    """A table that cannot be read: the message names the file (or name), what is wrong and
    the formats accepted."""


@dataclass(frozen=True)
class Table:
    """Where a table is and how it is read: `kind` is jsonl | json (an array) | csv | parquet |
    files (a folder of data files) | disk | hub; `path` is the file or folder read (for a
    cached dataset, its cache folder)."""

    spec: str
    kind: str
    path: Path
    key: str  # the config key that names the table, e.g. data.path
    split: str | None = None

    def rows(self, max_line_bytes: int | None = None) -> Iterator[tuple[int, Any, str | None]]:
        """(row number, row, None) or (row number, None, why) for every row."""
        if self.kind == "jsonl":
            yield from jsonl_lines(self.path, max_line_bytes)
            return
        if self.kind == "json":
            yield from _array_rows(self.path)
            return
        if self.kind == "files":
            n = 0
            for part in self.files():
                for _, row, error in part.rows(max_line_bytes):
                    n += 1
                    yield n, row, error
            return
        if self.kind == "parquet":
            yield from _parquet_rows(self.path)
            return
        if self.kind == "csv":
            raise TableError(f"{self.path}: a CSV file is read by its own loader, not here")
        for i, row in enumerate(self.dataset(), 1):
            yield i, row, None

    def files(self) -> list[Table]:
        """The tables that hold the rows, in order: each data file of a folder, else itself."""
        if self.kind != "files":
            return [self]
        return [_file_table(self.spec, f, self.key) for f in _data_files(self.path)]

    def file_rows(
        self, max_line_bytes: int | None = None
    ) -> Iterator[tuple[Table, int, int, Any, str | None]]:
        """(file, index in that file, row number, row, error) for every row of every file of
        `files()`, in order: what a loader needs to name a bad row and a file's first row."""
        for part in self.files():
            for i, (n, row, error) in enumerate(part.rows(max_line_bytes)):
                yield part, i, n, row, error

    def position(self, n: int) -> str:
        """Row number `n` as an error message names it: a JSONL file's line number, else
        `row <index>` (from 0)."""
        return str(n) if self.kind == "jsonl" else f"row {n - 1}"

    def where(self, part: Table, n: int) -> str:
        """Row `n` of `part` (one of `files()`) as an error names it after the table's path:
        its position, after the file's place in a folder (`data/train-0.parquet:row 3`)."""
        pos = part.position(n)
        return pos if part is self else f"{part.path.relative_to(self.path)}:{pos}"

    def columns(self, sample: int = 200) -> list[str]:
        """The table's columns: a parquet file's or a dataset's schema, or the keys of a JSONL
        file's first `sample` objects in order of appearance."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(self.path).names)
        if self.kind in ("disk", "hub"):
            return list(self.dataset().column_names)
        seen: dict[str, None] = {}
        n = 0
        for _, row, error in self.rows():
            if error is None and isinstance(row, dict):
                seen.update(dict.fromkeys(str(k) for k in row))
                n += 1
                if n >= sample:
                    break
        return list(seen)

    def dataset(self):
        """The `datasets.Dataset` of a save_to_disk folder or a cached dataset (its split)."""
        import datasets

        if self.kind == "disk":
            data = datasets.load_from_disk(str(self.path))
        else:
            data = _load_cached(self.spec, self.path)
        if isinstance(data, datasets.DatasetDict | dict):
            return self._split(data)
        return data

    def _split(self, data):
        want = self.split or "train"
        if want in data:
            return data[want]
        split_key = self.key.rsplit(".", 1)[0] + ".split"
        raise TableError(
            f"{self.key}={self.spec}: the dataset's splits are {', '.join(data)}, no '{want}'; "
            f"name one with {split_key}=<split>"
        )


def open_table(
    spec: str | Path,
    key: str,
    split: str | None = None,
    csv: bool = False,
    kind: str | None = None,
) -> Table:
    """The table `spec` names (a path, `matrix:` path or cached dataset name), checked to exist
    and to be of an accepted format; `key` is the config key that names it (in the errors).
    `csv=True` also accepts a .csv file (for a caller with its own CSV reader); `kind` (jsonl,
    csv, parquet) reads a file as that whatever its suffix (a format the user named)."""
    spec = str(spec)
    p = resolve_data_path(spec)
    if kind is not None and p.is_file():
        return Table(spec, kind, p, key)
    accepted = (
        ACCEPTED.replace("a parquet file", "a CSV file (.csv), a parquet file") if csv else ACCEPTED
    )
    if p.is_dir():
        if any((p / m).is_file() for m in _DISK_MARKERS):
            return Table(spec, "disk", p, key, split)
        if _data_files(p):
            return Table(spec, "files", p, key)
        raise TableError(
            f"{key}={spec}: {p} is a folder but not one written by datasets' save_to_disk (no "
            f"{' or '.join(_DISK_MARKERS)}) and holds no data file "
            f"({', '.join(DATA_SUFFIXES)}; hidden folders are passed over); {key} takes {accepted}"
        )
    if p.is_file():
        name = p.name.lower()
        if name.endswith(DATA_SUFFIXES):
            return _file_table(spec, p, key)
        if csv and name.endswith(".csv"):
            return Table(spec, "csv", p, key)
        raise TableError(
            f"{key}={spec}: {p} is not a format matrix reads (by its suffix, "
            f"'{p.suffix or 'none'}'); {key} takes {accepted}"
        )
    cached = _cache_folder(spec) if _HUB_NAME.match(spec) else None
    if cached is not None:
        return Table(spec, "hub", cached, key, split)
    hint = ""
    if _HUB_NAME.match(spec) and not Path(spec).suffix:
        hint = (
            f" It is not a dataset in the local Hugging Face datasets cache either "
            f"({_datasets_cache()}); fetch it once with network access: "
            f"`python -c \"import datasets; datasets.load_dataset('{spec}')\"`."
        )
    raise TableError(f"{key}={spec}: no file or folder at {p}.{hint} {key} takes {accepted}")


def _file_table(spec: str, path: Path, key: str) -> Table:
    """A data file's table (its suffix one of DATA_SUFFIXES): a `.json` file whose first
    character is `[` holds an array of rows; other JSON files are JSON Lines."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return Table(spec, "parquet", path, key)
    if name.endswith((".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"["):
            return Table(spec, "json", path, key)
    return Table(spec, "jsonl", path, key)


def _data_files(folder: Path) -> list[Path]:
    """Every data file under `folder` in name order, hidden folders and files passed over."""
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file()
        and f.name.lower().endswith(DATA_SUFFIXES)
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def _array_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: invalid UTF-8 at byte {e.start}") from e
    for i, row in enumerate(value, 1):
        yield i, row, None


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TableError(f"{path}: not a readable parquet file ({e})") from e
    n = 0
    for batch in f.iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            n += 1
            yield n, row, None


def _datasets_cache() -> Path:
    import datasets

    return Path(os.path.expanduser(str(datasets.config.HF_DATASETS_CACHE)))


def _cache_folder(name: str) -> Path | None:
    """The datasets cache folder of `name` (`owner___name`, as `datasets` writes it), or None
    when it holds no prepared version."""
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    folder = _datasets_cache() / "___".join(parts)
    versions = [p for p in folder.glob("*/*/*") if p.is_dir()]
    return folder if versions else None


def _load_cached(name: str, folder: Path):
    """The cached dataset `name`: `load_dataset(name)` when offline (it reads the cache then);
    online, the builder it uses offline, so a cached name never triggers a download."""
    import datasets

    log.info("%s: reading the cached dataset in %s", name, folder)
    if datasets.config.HF_HUB_OFFLINE:
        return datasets.load_dataset(name)
    from datasets.packaged_modules.cache.cache import Cache

    builder = Cache(dataset_name=name.split("/")[-1], repo_id=name, version="auto", hash="auto")
    return builder.as_dataset()
