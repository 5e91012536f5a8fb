"""Reading a file of your own questions for the `custom` benchmark: a CSV file, or any table
`matrix.common.tables` reads (JSONL, parquet, a datasets save_to_disk folder, a dataset in the
local Hugging Face datasets cache; `split` picks a DatasetDict's split, "train" by default).

`columns` maps the fields to the file's column names: `instruction` (required), `id`
(optional; the line number otherwise), `reference` and `category` (optional); the map is
checked against the file's columns before any row is read (`matrix.common.columns`, as the
profile loader's `population.fields`): a column the file lacks is named with the file's
columns and a proposed map, fatal for `instruction`. A row that cannot
be used (not JSON, not an object, no instruction, a duplicate id, no reference where the
baseline needs one) is named by file and line, and fails the run (`on_error: fail`) or is
skipped (`on_error: skip`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from matrix.common.bad_rows import BadRows
from matrix.common.columns import column_map_problem, propose_columns
from matrix.common.tables import Table, open_table
from matrix.common.validation import ConfigError

log = logging.getLogger(__name__)

KEY = "eval.benchmarks.custom"
Record = dict[str, Any]  # as matrix.eval.benchmarks.base.Record (imported from there, a cycle)
FORMATS = ("auto", "jsonl", "csv")
DEFAULT_COLUMNS = {
    "id": "id",
    "instruction": "instruction",
    "reference": "reference",
    "category": "category",
}


# Column names other question sets use for each field, best first (proposals for `columns`).
SYNONYMS = {
    "instruction": ("instruction", "prompt", "question", "query", "input", "turns", "text"),
    "id": ("id", "questionid", "qid", "uid", "idx", "index"),
    "reference": ("reference", "referenceanswer", "answer", "output", "response", "target"),
    "category": ("category", "type", "topic", "domain", "cluster", "subset"),
}


def _rows(table: Table) -> Iterator[tuple[int, Any]]:
    """(row number, row dict or why it is unusable) for every record of the table."""
    if table.kind != "csv":
        for lineno, obj, error in table.rows():
            if error is None and not isinstance(obj, dict):
                error = f"expected a JSON object, got {type(obj).__name__}"
            yield lineno, obj if error is None else error
        return
    yield from _csv_rows(table.path)


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            width = len(reader.fieldnames or [])
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield reader.line_num, f"not valid CSV ({e})"
                    continue
                if None in row:  # more fields than the header
                    yield (
                        reader.line_num,
                        f"{width + len(row[None])} fields, the header has {width}",
                    )
                elif any(v is None for v in row.values()):
                    n = sum(v is not None for v in row.values())
                    yield reader.line_num, f"{n} fields, the header has {width}"
                else:
                    yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from e


def check_columns(table: Table, cols: Mapping[str, str | None]) -> None:
    """Stop when the instruction's column is absent (naming the file's columns and a map that
    fits); warn for an optional column named by the user that is absent (that field stays
    empty). An optional column left at its default name may be absent."""
    have = _csv_header(table.path) if table.kind == "csv" else table.columns()
    proposal = propose_columns(have, tuple(SYNONYMS), SYNONYMS)
    named = {f: c for f, c in cols.items() if f == "instruction" or c != DEFAULT_COLUMNS.get(f)}
    fatal = lambda absent: "instruction" in absent  # noqa: E731
    problem = column_map_problem(table.spec, have, named, f"{KEY}.columns", proposal, fatal)
    if problem is None:
        return
    what, is_fatal = problem
    if is_fatal:
        raise ConfigError(what)
    log.warning("%s; until then those fields stay empty", what)


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return [c for c in (csv.DictReader(f).fieldnames or []) if c]


def _text(row: Mapping, column: str | None) -> str | None:
    """The stripped string in `column`, None when the column is unset, absent or empty."""
    if not column:
        return None
    value = row.get(column)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"column '{column}' holds a {type(value).__name__}, expected text")
    return str(value).strip() or None


def load_questions(
    path: str | Path,
    columns: Mapping[str, str | None] | None = None,
    fmt: str = "auto",
    on_error: str = "fail",
    need_reference: bool = False,
    split: str | None = None,
) -> list[Record]:
    """Questions as records {"id", "prompt", "reference", "category", "line"}.

    A malformed row is named `<file>:<line>: <why>` and fails (ConfigError) or is skipped,
    by `on_error`. `need_reference` makes a missing reference answer such a row.
    """
    cols = {**DEFAULT_COLUMNS, **dict(columns or {})}
    if fmt not in FORMATS:
        raise ConfigError(f"{KEY}.format={fmt!r}: use one of {', '.join(FORMATS)}")
    table = open_table(path, f"{KEY}.path", split, csv=True, kind=None if fmt == "auto" else fmt)
    p = table.path
    check_columns(table, cols)
    bad = BadRows(p, on_error, f"{KEY}.on_error")
    items: list[Record] = []
    seen: set[str] = set()
    lines = 0
    for lineno, row in _rows(table):
        lines += 1
        q = row if isinstance(row, str) else _question(row, lineno, cols)
        if isinstance(q, str):
            bad.add(lineno, q)
        elif q["id"] in seen:
            bad.add(lineno, f"duplicate id '{q['id']}'")
        elif need_reference and q["reference"] is None:
            bad.add(lineno, _no_reference(cols))
        else:
            seen.add(q["id"])
            items.append(q)
    if not items:
        raise ConfigError(
            f"{p}: no usable question among {lines} rows; check {KEY}.columns.instruction"
        )
    bad.summary(lines)
    return items


def _question(row: Mapping, lineno: int, cols: Mapping[str, str | None]) -> Record | str:
    """One row as a question record, or why it cannot be one."""
    try:
        prompt = _text(row, cols["instruction"])
        qid = _text(row, cols["id"]) or str(lineno)
        reference = _text(row, cols["reference"])
        category = _text(row, cols["category"])
    except ValueError as e:
        return str(e)
    if prompt is None:
        return (
            f"no instruction in column '{cols['instruction']}' (the column is named by "
            f"{KEY}.columns.instruction)"
        )
    return {"id": qid, "prompt": prompt, "reference": reference, "category": category,
            "line": lineno}  # fmt: skip


def _no_reference(cols: Mapping[str, str | None]) -> str:
    return (
        (
            f"no reference answer in column '{cols['reference']}'"
            if cols["reference"]
            else f"no reference column ({KEY}.columns.reference is null)"
        )
        + f", which baseline=reference needs (set {KEY}.columns.reference to the "
        "column of reference answers, or use baseline=role or baseline=run)"
    )
