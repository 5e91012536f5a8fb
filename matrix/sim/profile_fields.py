"""Which column of a profile file holds which of our fields (`population.fields`).

Before any row is read the file's columns are compared with the map: a required field (id,
and persona or bio) whose column the file lacks stops the load at once with the file's
columns and a proposed map (known synonyms, then name similarity:
`population.fields.persona=bio ...`); an optional field whose column is absent is reported
the same way and stays empty.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from matrix.common.io import jsonl_lines
from matrix.common.validation import ConfigError

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "persona")  # persona falls back to bio
FIELDS = ("id", "name", "handle", "bio", "persona", "topics", "posts")
# Column names other profile sources use for each field, best first (normalized: lower case,
# letters and digits only). A persona column may be missing: the bio stands in for it.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "id": ("id", "userid", "uid", "user", "accountid", "authorid", "profileid", "agentid"),
    "name": ("name", "fullname", "displayname", "realname", "screenname"),
    "handle": ("username", "handle", "screenname", "login", "nick", "nickname"),
    "bio": ("bio", "description", "about", "summary", "profile", "biography", "selfdescription"),
    "persona": ("persona", "userchar", "usercharclean", "character", "personality", "profiletext"),
    "topics": ("topics", "interests", "tags", "hashtags", "categories"),
    "posts": (
        "posts",
        "previoustweets",
        "recenttweets",
        "tweets",
        "recentposts",
        "statuses",
        "history",
        "messages",
    ),
}
# Rows whose keys make up a JSONL file's columns (a sparse file need not repeat every key).
_COLUMN_SAMPLE_ROWS = 200


class ProfileError(ConfigError):
    """A profile file or row that cannot be used, with the reason."""


def file_columns(path: Path, fmt: str, max_line_bytes: int | None = None) -> list[str]:
    """The columns of a profile file: a CSV's header, or the keys of a JSONL file's first
    objects in order of appearance (lines that are not objects are left to the loader)."""
    fmt = fmt if fmt != "auto" else ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            return [c for c in (csv.DictReader(f).fieldnames or []) if c]
    columns: dict[str, None] = {}
    objects = (o for _, o, e in jsonl_lines(path, max_line_bytes) if isinstance(o, dict))
    for obj in itertools.islice(objects, _COLUMN_SAMPLE_ROWS):
        columns.update(dict.fromkeys(str(k) for k in obj))
    return list(columns)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _match_score(field: str, column: str) -> float:
    """How well `column` fits our `field`: 1 for a known synonym (earlier ones a little
    higher), 0.8 when a synonym is one word of the column (`user_bio`), else the best
    spelling similarity to a synonym (`descripton`)."""
    col = _norm(column)
    words = {_norm(w) for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", column) if w}
    names = SYNONYMS.get(field, (field,))
    if col in names:
        return 1.0 - names.index(col) * 0.01
    if words & set(names):
        return 0.8
    return max(difflib.SequenceMatcher(None, col, n).ratio() for n in names) * 0.9


def propose_fields(columns: list[str]) -> dict[str, str | None]:
    """A field map for a file with these columns: each field gets the best-fitting column not
    already taken (a score of at least 0.7), else null; a persona with no column of its own
    gets the bio's column."""
    out: dict[str, str | None] = {}
    taken: set[str] = set()
    for field in ("id", "persona", "bio", "handle", "name", "posts", "topics"):
        scored = [(_match_score(field, c), c) for c in columns if c not in taken]
        score, best = max(scored, default=(0.0, None))
        out[field] = best if score >= 0.7 else None
        if best is not None and score >= 0.7:
            taken.add(best)
    if out["persona"] is None:
        out["persona"] = out["bio"]
    return {f: out[f] for f in FIELDS}


def field_map_problem(
    path: Path, columns: list[str], fields: Mapping[str, str | None]
) -> tuple[str, bool] | None:
    """What is wrong with the field map for a file with these columns, and whether it is
    fatal (a required field without a column; see the module docstring); None when every
    mapped column is there (or the file has no readable row: the loader reports each line)."""
    absent = {f: c for f, c in fields.items() if c and c not in columns}
    if not columns or not absent:
        return None
    has = {f: bool(fields.get(f)) and f not in absent for f in FIELDS}
    fatal = not has["id"] or not (has["persona"] or has["bio"])
    proposal = propose_fields(columns)
    fix = " ".join(
        f"population.fields.{f}={proposal[f] if proposal[f] is not None else 'null'}"
        for f in FIELDS
        if proposal[f] != fields.get(f)
    )
    gone = ", ".join(f"'{c}' (population.fields.{f})" for f, c in absent.items())
    what = (
        f"{path}: no column {gone}; the file's columns are: {', '.join(columns)}. "
        f"Map them with: {fix}"
    )
    if fatal:
        what += (
            " (an id column and a persona or bio column are required; a profile with a bio "
            "but no persona uses the bio)"
        )
    return what, fatal


def check_fields(path: Path, columns: list[str], fields: Mapping[str, str | None]) -> None:
    """Raise ProfileError for a fatal field-map problem, log a warning for the others."""
    problem = field_map_problem(path, columns, fields)
    if problem is None:
        return
    what, fatal = problem
    if fatal:
        raise ProfileError(what)
    log.warning("%s; until then these fields stay empty", what)
