"""Which column of a profile file holds which of our fields (`population.fields`).

Before any row is read the file's columns are compared with the map: a required field (id,
and persona or bio) whose column the file lacks stops the load at once with the file's
columns and a proposed map (known synonyms, then name similarity:
`population.fields.persona=bio ...`); an optional field whose column is absent is reported
the same way and stays empty. The mechanism is `matrix.common.columns`, which the training data
(`data.columns`) and the custom questions (`eval.benchmarks.custom.columns`) share.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

from matrix.common.columns import column_map_problem, propose_columns
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


# The order fields pick their column in: the required ones first.
_PICK_ORDER = ("id", "persona", "bio", "handle", "name", "posts", "topics")


def propose_fields(columns: list[str]) -> dict[str, str | None]:
    """A field map for a file with these columns (`matrix.common.columns.propose_columns`);
    a persona with no column of its own gets the bio's column."""
    out = propose_columns(columns, _PICK_ORDER, SYNONYMS)
    if out["persona"] is None:
        out["persona"] = out["bio"]
    return {f: out[f] for f in FIELDS}


def field_map_problem(
    path: Path, columns: list[str], fields: Mapping[str, str | None]
) -> tuple[str, bool] | None:
    """What is wrong with the field map for a file with these columns, and whether it is
    fatal (a required field without a column; see the module docstring); None when every
    mapped column is there (or the file has no readable row: the loader reports each line)."""

    def fatal(absent: set[str]) -> bool:
        has = {f: bool(fields.get(f)) and f not in absent for f in FIELDS}
        return not has["id"] or not (has["persona"] or has["bio"])

    problem = column_map_problem(
        path, columns, fields, "population.fields", propose_fields(columns), fatal
    )
    if problem is None or not problem[1]:
        return problem
    return problem[0] + (
        " (an id column and a persona or bio column are required; a profile with a bio "
        "but no persona uses the bio)"
    ), True


def check_fields(path: Path, columns: list[str], fields: Mapping[str, str | None]) -> None:
    """Raise ProfileError for a fatal field-map problem, log a warning for the others."""
    problem = field_map_problem(path, columns, fields)
    if problem is None:
        return
    what, fatal = problem
    if fatal:
        raise ProfileError(what)
    log.warning("%s; until then these fields stay empty", what)
