"""Where the bundled benchmark files live and how to read them (see data/ATTRIBUTION.md)."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matrix.common import io

DATA_DIR = Path(__file__).parent / "data"


def data_path(relative: str) -> Path:
    """Path of a bundled data file; raises with the expected location if it is missing."""
    path = DATA_DIR / relative
    if not path.exists():
        raise FileNotFoundError(
            f"benchmark data file {path} is missing; it ships with the package under "
            "matrix/eval/data (reinstall the package or restore the file from git)"
        )
    return path


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".gz"
        else path.open(encoding="utf-8")
    )


def iter_jsonl(relative: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a (optionally gzipped) JSONL file, relative to the data folder or absolute
    (read by `matrix.common.io.iter_jsonl`)."""
    path = Path(relative) if Path(relative).is_absolute() else data_path(str(relative))
    return io.iter_jsonl(path)


def read_jsonl(relative: str | Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(relative))


def read_csv(relative: str) -> list[dict[str, str]]:
    with _open_text(data_path(relative)) as f:
        return list(csv.DictReader(f))


def read_json(relative: str) -> Any:
    with _open_text(data_path(relative)) as f:
        return json.load(f)


def read_text(relative: str) -> str:
    with _open_text(data_path(relative)) as f:
        return f.read()
