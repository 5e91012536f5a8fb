"""Structured answers from free text: JSON objects and lists of ints, with one repair.

Small models wrap JSON in prose, code fences, single quotes or trailing commas, and answer
"pick the agents" prompts with `[0, 2], because ...`. The parsers here accept that mess and
reject what carries no answer; `generate_structured` asks the model once more, showing it the
parse error, before giving up on a row with a typed `StructuredOutputError`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

from matrix.llm.errors import StructuredOutputError
from matrix.llm.protocol import Chat

T = TypeVar("T")

_FENCE = re.compile(r"```(?:json|JSON|python)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_INT_LIST = re.compile(r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)?\s*,?\s*\]")
_LEADING_INTS = re.compile(r"^\s*(?:answer\s*:?\s*)?(-?\d+(?:\s*(?:,|and)\s*-?\d+)*)\b", re.I)


def _candidates(text: str) -> list[str]:
    """Substrings that may hold the JSON value, most likely first."""
    out = [m.group(1) for m in _FENCE.finditer(text)]
    out.append(text)
    return out


def _decode_at(s: str, start: int) -> Any:
    """Decode one JSON (or Python-literal) value starting at s[start], tolerating trailing
    commas and single quotes."""
    try:
        return json.JSONDecoder().raw_decode(s, start)[0]
    except json.JSONDecodeError:
        pass
    # Find the matching bracket, then retry with repairs on that slice only.
    open_c = s[start]
    close_c = "}" if open_c == "{" else "]"
    depth, in_str, quote = 0, False, ""
    for j in range(start, len(s)):
        c = s[j]
        if in_str:
            if c == "\\":
                continue
            if c == quote:
                in_str = False
        elif c in "\"'":
            in_str, quote = True, c
        elif c == open_c:
            depth += 1
        elif c == close_c:
            depth -= 1
            if depth == 0:
                chunk = _TRAILING_COMMA.sub(r"\1", s[start : j + 1])
                try:
                    return json.loads(chunk)
                except json.JSONDecodeError:
                    pass
                try:  # single quotes, True/False/None
                    return ast.literal_eval(chunk)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    break
    raise ValueError("no value")


def parse_json(text: str, expect: type | None = None) -> Any:
    """The first JSON object or array in `text` (optionally of type `expect`: dict or list)."""
    for cand in _candidates(text):
        for i, c in enumerate(cand):
            if c not in "{[":
                continue
            try:
                value = _decode_at(cand, i)
            except ValueError:
                continue
            if expect is None or isinstance(value, expect):
                return value
    what = {dict: "a JSON object", list: "a JSON array"}.get(expect, "JSON")
    raise StructuredOutputError(f"no {what} found in the answer: {text[:200]!r}", text)


def parse_int_list(text: str, valid: Container[int] | None = None) -> list[int]:
    """A list of ints like `[0, 2], reason` (or a bare `0, 2 - reason`); every int must be in
    `valid` when given. Duplicates are dropped, order kept."""
    m = _INT_LIST.search(text)
    if m is not None:
        body = m.group(1) or ""
    else:
        lead = _LEADING_INTS.match(text)
        if lead is None:
            raise StructuredOutputError(f"no list of integers in the answer: {text[:200]!r}", text)
        body = lead.group(1)
    ints = list(dict.fromkeys(int(x) for x in re.findall(r"-?\d+", body)))
    if valid is not None:
        bad = [i for i in ints if i not in valid]
        if bad:
            raise StructuredOutputError(f"integers {bad} are not valid choices in {text!r}", text)
    return ints


REPAIR_PROMPT = (
    "Your previous answer could not be read: {error}\n"
    "Answer again with only {format}, nothing else."
)


def generate_structured(
    llm: Any,
    chats: Sequence[Chat],
    parse: Callable[[str], T],
    format_hint: str,
    strict: bool = False,
    **overrides: Any,
) -> list[T | StructuredOutputError]:
    """Generate with `llm` (a role's LLM), parse every answer, and give each row that fails
    one repair turn (the model sees its answer and the parse error).

    Rows that still fail come back as `StructuredOutputError` (with the text), or raise the
    first one, naming its row, when `strict`.
    """
    texts = [c.text for c in llm.generate(chats, **overrides)]
    out: list[T | StructuredOutputError] = []
    failed: list[int] = []
    for i, t in enumerate(texts):
        try:
            out.append(parse(t))
        except StructuredOutputError as e:
            out.append(e)
            failed.append(i)
    if failed:
        repairs = [
            [
                *chats[i],
                {"role": "assistant", "content": texts[i]},
                {
                    "role": "user",
                    "content": REPAIR_PROMPT.format(error=out[i], format=format_hint),
                },
            ]
            for i in failed
        ]
        for i, c in zip(failed, llm.generate(repairs, **overrides), strict=True):
            try:
                out[i] = parse(c.text)
            except StructuredOutputError as e:
                out[i] = StructuredOutputError(
                    f"row {i}: unreadable after one repair ({e}); first answer: {texts[i][:200]!r}",
                    c.text,
                )
    if strict:
        for x in out:
            if isinstance(x, StructuredOutputError):
                raise x
    return out
