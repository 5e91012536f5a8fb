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
