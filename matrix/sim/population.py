"""Profiles in: load (JSONL or CSV, any field names) and sample.

`population.fields` maps our fields to the file's columns; the map is checked against the
file before any row is read (`matrix.sim.profile_fields`). A profile with a bio but no persona
uses the bio as its persona. Rule-based anonymization is `matrix.sim.pseudonyms`.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from matrix.common.bad_rows import BadRows
from matrix.common.io import jsonl_lines, resolve_data_path
from matrix.sim.profile_fields import ProfileError, check_fields, file_columns
from matrix.sim.schemas import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    path: str
    lines: int
    loaded: int
    skipped: tuple[str, ...]
    under_age: int = 0  # profiles dropped because they state an age below population.min_age


def _rows(path: Path, fmt: str, max_line_bytes: int | None = None):
    """(line number, row or error message) for every record of a JSONL or CSV file; a JSONL
    line over `max_line_bytes` is reported, never read into memory whole."""
    fmt = fmt if fmt != "auto" else ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            for i, row in enumerate(csv.DictReader(f), 2):
                yield i, row
        return
    for i, obj, error in jsonl_lines(path, max_line_bytes):
        if error is None and not isinstance(obj, dict):
            error = f"expected a JSON object, got {type(obj).__name__}"
        yield i, obj if error is None else error


def _as_list(value) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s.replace("'", '"'))
            except json.JSONDecodeError:
                value = [x.strip(" '\"") for x in s.strip("[]").split(",")]
        else:
            value = [x.strip() for x in s.split(";") if x.strip()]
    return tuple(str(x) for x in value if str(x).strip())


def _to_profile(row: Mapping, fields: Mapping[str, str | None], max_chars: int) -> Profile:
    def get(key: str) -> object:
        src = fields.get(key)
        return row.get(src) if src else None

    def blank(key: str) -> bool:
        return not str(get(key) or "").strip()

    missing = []
    if blank("id"):
        missing.append(f"id (column '{fields.get('id')}')")
    if blank("persona") and blank("bio"):
        missing.append(
            f"persona (column '{fields.get('persona')}') and bio (column '{fields.get('bio')}')"
        )
    if missing:
        raise ProfileError(f"missing or empty: {', '.join(missing)}")
    for key in ("name", "bio", "persona", "handle"):
        v = get(key)
        if v is not None and not isinstance(v, str | int | float):
            raise ProfileError(f"field '{fields.get(key)}' should be text, got {type(v).__name__}")
    text = {k: str(get(k) or "").strip()[:max_chars] for k in ("name", "bio", "persona", "handle")}
    text["persona"] = text["persona"] or text["bio"]
    return Profile(
        id=str(get("id")).strip(),
        name=text["name"] or str(get("id")),
        bio=text["bio"],
        persona=text["persona"],
        handle=text["handle"],
        topics=_as_list(get("topics")),
        posts=_as_list(get("posts")),
    )


def load_profiles(
    path: str,
    fields: Mapping[str, str | None],
    fmt: str = "auto",
    on_error: str = "skip",
    max_chars: int = 4000,
    min_age: int | None = None,
    max_line_bytes: int | None = None,
) -> tuple[list[Profile], LoadReport]:
    """Read every profile; malformed lines are reported with their line number and skipped
    (`on_error=skip`) or fail the run (`on_error=fail`)."""
    p = resolve_data_path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"population.path: no file at {p}; point population.path at a JSONL or CSV file of "
            "profiles, or use population=default (the 1,000 shipped profiles)"
        )
    bad = BadRows(p, on_error, "population.on_error", ProfileError)
    check_fields(p, file_columns(p, fmt, max_line_bytes), fields)
    profiles: list[Profile] = []
    seen: set[str] = set()
    lines = under_age = 0
    for lineno, row in _rows(p, fmt, max_line_bytes):
        lines += 1
        try:
            if isinstance(row, str):
                raise ProfileError(row)
            prof = _to_profile(row, fields, max_chars)
            if prof.id in seen:
                raise ProfileError(f"duplicate id '{prof.id}'")
            if (
                min_age is not None
                and (age := _stated_age(prof.persona)) is not None
                and age < min_age
            ):
                under_age += 1
                continue
        except ProfileError as e:
            bad.add(lineno, str(e))
            continue
        seen.add(prof.id)
        profiles.append(prof)
    if not profiles:
        raise ProfileError(f"{p}: no usable profile among {lines} lines; check population.fields")
    bad.summary(lines)
    if under_age:
        log.info("population: dropped %d profiles stating an age below %d", under_age, min_age)
    return profiles, LoadReport(str(p), lines, len(profiles), tuple(bad.skipped), under_age)


def _stated_age(text: str) -> int | None:
    m = re.search(r"(\d{1,2})-year-old", text)
    return int(m.group(1)) if m else None


def sample_profiles(profiles: list[Profile], size: int | None, seed: int) -> list[Profile]:
    if size is None or size >= len(profiles):
        return list(profiles)
    rng = random.Random(seed)
    return sorted(rng.sample(profiles, size), key=lambda p: p.id)
