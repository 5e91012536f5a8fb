"""Profiles in, agents out: load (JSONL or CSV, any field names), anonymize, sample.

`population.fields` maps our fields to the file's columns. Before any row is read the file's
columns are compared with the map: a required field (id, and persona or bio) whose column the
file lacks stops the load at once with the file's columns and a proposed map (known synonyms,
then name similarity: `population.fields.persona=bio ...`); an optional field whose column
is absent is reported the same way and stays empty. A profile with a bio but no persona uses
the bio as its persona.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from matrix.common.bad_rows import BadRows
from matrix.common.io import jsonl_lines
from matrix.core.validation import ConfigError
from matrix.sim.schemas import Profile

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "matrix:"
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

# Neutral pseudonyms for rule-based anonymization; seeded shuffle so the same config gives the
# same names.
_PSEUDONYMS = (
    "Alex Rivera",
    "Sam Okafor",
    "Jordan Lee",
    "Taylor Novak",
    "Casey Morgan",
    "Riley Chen",
    "Morgan Silva",
    "Jamie Patel",
    "Avery Kim",
    "Quinn Murphy",
    "Drew Santos",
    "Parker Ng",
    "Reese Adams",
    "Rowan Ali",
    "Skyler Brooks",
    "Emerson Cruz",
    "Hayden Park",
    "Kendall Diaz",
    "Logan Weiss",
    "Micah Hughes",
    "Noel Fischer",
    "Peyton Rossi",
    "Sage Kowalski",
    "Blair Ito",
    "Cameron Yusuf",
    "Dakota Berg",
    "Elliot Moreau",
    "Finley Costa",
    "Harper Lund",
    "Jesse Nair",
)


class ProfileError(ConfigError):
    pass


@dataclass(frozen=True)
class LoadReport:
    path: str
    lines: int
    loaded: int
    skipped: tuple[str, ...]
    under_age: int = 0  # profiles dropped because they state an age below population.min_age


def resolve_data_path(path: str) -> Path:
    """`matrix:data/...` -> a file shipped inside the package; anything else as given."""
    if path.startswith(PACKAGE_PREFIX):
        return Path(__file__).resolve().parents[1] / path[len(PACKAGE_PREFIX) :]
    return Path(path).expanduser()


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


def anonymize_rules(profiles: list[Profile], seed: int) -> list[Profile]:
    """Replace each profile's own name and handle (and any @handle, URL) with a pseudonym.

    The LLM pass (`population.anonymize=llm`, see agents.py) also removes places and other
    people's names; this rule pass is exact for the fields we know and costs nothing.
    """
    rng = random.Random(seed)
    names = list(_PSEUDONYMS)
    rng.shuffle(names)
    out = []
    for i, p in enumerate(profiles):
        pseudo = names[i % len(names)] + ("" if i < len(names) else f" {i // len(names) + 1}")
        first = pseudo.split()[0]

        def scrub(text: str, p=p, pseudo=pseudo, first=first) -> str:
            if p.name:
                text = re.sub(re.escape(p.name), pseudo, text, flags=re.IGNORECASE)
                for part in p.name.split():
                    if len(part) > 2:
                        text = re.sub(rf"\b{re.escape(part)}\b", first, text)
            if p.handle:
                text = re.sub(
                    re.escape(p.handle), pseudo.replace(" ", ""), text, flags=re.IGNORECASE
                )
            text = re.sub(r"https?://\S+", "[link]", text)
            return re.sub(r"@\w+", "@user", text)

        out.append(
            replace(
                p,
                name=pseudo,
                handle="",
                bio=scrub(p.bio),
                persona=scrub(p.persona),
                posts=tuple(scrub(x) for x in p.posts),
            )
        )
    return out
