"""Which column of a user's table holds which of our fields: one map, checked before any row.

A loader names its fields and a config key holding the map (`population.fields`,
`data.columns`, `eval.benchmarks.custom.columns`: our field -> the file's column, null for
none). Before any row is read the file's columns are compared with the map: a mapped column the
file lacks is reported with the file's columns and a proposed map (known synonyms of each field
first, then spelling similarity: `data.columns.messages=conversations`), fatal when the field
is required. `apply_columns` renames a row's columns to our fields.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# A proposed column must fit at least this well (see `match_score`).
MIN_SCORE = 0.7


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_score(names: Sequence[str], column: str) -> float:
    """How well `column` fits a field known by `names` (normalized synonyms, best first): 1
    for a synonym (earlier ones a little higher), 0.8 when a synonym is one word of the column
    (`user_bio`), else the best spelling similarity to a synonym (`descripton`) times 0.9."""
    col = _norm(column)
    words = {_norm(w) for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", column) if w}
    if col in names:
        return 1.0 - list(names).index(col) * 0.01
    if words & set(names):
        return 0.8
    return max(difflib.SequenceMatcher(None, col, n).ratio() for n in names) * 0.9


def propose_columns(
    columns: Sequence[str], order: Sequence[str], synonyms: Mapping[str, Sequence[str]]
) -> dict[str, str | None]:
    """A map for a file with these columns: each field (in `order`, the most important first)
    gets the best-fitting column not already taken (a score of at least MIN_SCORE), else
    None."""
    out: dict[str, str | None] = {}
    taken: set[str] = set()
    for field in order:
        names = synonyms.get(field, (_norm(field),))
        scored = [(match_score(names, c), c) for c in columns if c not in taken]
        score, best = max(scored, default=(0.0, None))
        out[field] = best if score >= MIN_SCORE else None
        if out[field] is not None:
            taken.add(best)
    return out


def column_map_problem(
    source: str | Path,
    columns: Sequence[str],
    mapping: Mapping[str, str | None],
    key: str,
    proposal: Mapping[str, str | None],
    fatal: Callable[[set[str]], bool],
) -> tuple[str, bool] | None:
    """What is wrong with `mapping` (the config block `key`) for a file with these columns:
    the message (the absent columns, the file's columns, the overrides of `proposal` that
    differ) and whether it is fatal (`fatal(fields whose column is absent)`); None when every
    mapped column is there, or the file has no readable row (its loader reports each line)."""
    absent = {f: c for f, c in mapping.items() if c and c not in columns}
    if not columns or not absent:
        return None
    fix = " ".join(
        f"{key}.{f}={proposal[f] if proposal[f] is not None else 'null'}"
        for f in proposal
        if proposal[f] != mapping.get(f)
    )
    gone = ", ".join(f"'{c}' ({key}.{f})" for f, c in absent.items())
    what = f"{source}: no column {gone}; the file's columns are: {', '.join(columns)}"
    return what + (f". Map them with: {fix}" if fix else ""), fatal(set(absent))


def apply_columns(row: Mapping[str, Any], mapping: Mapping[str, str | None]) -> dict[str, Any]:
    """`row` with each mapped column under our field's name (other columns are kept)."""
    out = dict(row)
    for field, column in mapping.items():
        if column and column != field and column in row:
            out[field] = row[column]
    return out
