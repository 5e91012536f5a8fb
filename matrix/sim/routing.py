"""Parsing modulator answers of the form `[0, 2], reason`.

Small models answer messily ("Members 0 and 2, because ...", "[1,2,]", "none"); the parser is
tolerant, and callers retry once and then fall back, logging which path each decision took.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LIST = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"-?\d+")
_NONE = re.compile(r"^\W*(none|nobody|no one|no-one|\[\s*\])", re.IGNORECASE)


@dataclass(frozen=True)
class Route:
    ids: tuple[int, ...]
    reason: str


def parse_route(text: str, valid: range | set[int], exclude: int | None = None) -> Route | None:
    """Ids from the first bracketed list (else bare numbers) that fall in `valid`.

    Returns None when the answer carries no usable decision; an explicit empty answer
    ("[]", "none") is a decision to tell nobody and returns an empty Route.
    """
    text = (text or "").strip()
    if not text:
        return None
    m = _LIST.search(text)
    if m:
        body, reason = m.group(1), text[m.end() :]
    elif _NONE.match(text):
        return Route((), text)
    else:
        body, reason = text, text
    nums = [int(x) for x in _INT.findall(body)]
    ids = tuple(sorted({n for n in nums if n in valid and n != exclude}))
    if m and not body.strip():
        return Route((), reason.strip(" ,.;:-"))
    if not ids:
        if _NONE.match(text):
            return Route((), text)
        return None
    return Route(ids, reason.strip(" ,.;:-")[:300])


# A labelled answer line: "A: [1, 2], reason", "B) []", "Item C - [0]". The label must be
# followed by a separator, so a sentence that starts with "I think" is not item I.
_LABELLED = re.compile(r"^\W*(?:item\s+)?([A-Z]{1,2})\s*[:)\-]\s*(.*)$", re.IGNORECASE)


def item_label(k: int) -> str:
    """A, B, ..., Z, AA, AB, ...: labels for the items a modulator routes in one answer."""
    letters = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        letters = chr(65 + r) + letters
    return letters


def parse_routes(
    text: str, labels: list[str], valid: range | set[int], exclude: dict[str, int | None]
) -> dict[str, Route]:
    """Per-item routes from a modulator answer that decides several items at once.

    Each answer line `LABEL: [ids], reason` decides the item of that label (the first line
    for a label wins; `exclude[label]` is dropped from its ids, e.g. the item's own actor).
    A single-item answer without a label is read as that item's route. Labels absent from
    the answer, or whose line carries no usable decision, are missing from the result.
    """
    wanted = {x.upper() for x in labels}
    out: dict[str, Route] = {}
    for line in (text or "").splitlines():
        m = _LABELLED.match(line)
        if not m:
            continue
        label = m.group(1).upper()
        if label not in wanted or label in out:
            continue
        route = parse_route(m.group(2), valid, exclude=exclude.get(label))
        if route is not None:
            out[label] = route
    if not out and len(labels) == 1:
        route = parse_route(text, valid, exclude=exclude.get(labels[0]))
        if route is not None:
            out[labels[0]] = route
    return out


def answered_labels(text: str, labels: list[str]) -> set[str]:
    """The labels an answer has a labelled line for, usable or not (a single item's answer
    without a label answers that item)."""
    wanted = {x.upper() for x in labels}
    seen = set()
    for line in (text or "").splitlines():
        m = _LABELLED.match(line)
        if m and m.group(1).upper() in wanted:
            seen.add(m.group(1).upper())
    if not seen and len(labels) == 1 and (text or "").strip():
        seen.add(labels[0])
    return seen
