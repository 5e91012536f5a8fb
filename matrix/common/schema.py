"""Typed config schemas: plain dataclasses whose field types say what a config key may hold.

    @dataclass(frozen=True)
    class Retrieval:
        top_k: Count | None          # an integer >= 1, or null
        mmr_lambda: Fraction         # a number in [0, 1]
        mode: Literal["a", "b"]      # one of 'a', 'b'

`check(value, Schema, "generate.retrieval", problems)` adds one problem per wrong value,
naming its full dotted key, the value and what the key takes; every problem at once. A field
without a default is required (`???` or absent is reported). Keys a schema does not name are
left alone: the key check (matrix.core.config_check.check_keys) names unknown keys with a
did-you-mean. A schema with a `rules(block)` staticmethod adds the checks that relate fields
(index < count); it runs only when every field has the right type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union

from matrix.common.validation import ConfigProblems


@dataclass(frozen=True)
class Range:
    """A bound on a number, used as `Annotated[int, Range(1)]`; `open_min`: strictly above."""

    min: float | None = None
    max: float | None = None
    open_min: bool = False

    def holds(self, v: float) -> bool:
        low = self.min is None or (v > self.min if self.open_min else v >= self.min)
        return low and (self.max is None or v <= self.max)

    def text(self) -> str:
        low = f"> {self.min:g}" if self.open_min else f">= {self.min:g}"
        if self.max is None:
            return low
        if self.min is None:
            return f"<= {self.max:g}"
        return f"in {'(' if self.open_min else '['}{self.min:g}, {self.max:g}]"


Count = Annotated[int, Range(1)]  # zero would do no work, which is never intended
Natural = Annotated[int, Range(0)]  # zero means "never" / "none"
Fraction = Annotated[float, Range(0, 1)]
AtLeastOne = Annotated[float, Range(1)]


def required(**kw: Any) -> Any:
    """A field that must be set although its dataclass gives it a default (a subclass of a
    dataclass with defaults cannot add a field without one)."""
    return dataclasses.field(default=None, metadata={"required": True}, **kw)


MISSING = "???"
_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _args(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def describe(hint: Any) -> str:
    """What a key of type `hint` takes, in words ("an integer >= 1 or null")."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return "anything"
    if hint is type(None):
        return "null"
    if origin is Annotated:
        base, *extra = _args(hint)
        bounds = " ".join(r.text() for r in extra if isinstance(r, Range))
        return f"{describe(base)} {bounds}".strip()
    if _is_union(hint):
        return " or ".join(describe(a) for a in _args(hint) if from_config(a))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in _args(hint))
    if origin in (list, tuple):
        return f"a list of {_plural(describe(_args(hint)[0]))}"
    if origin is dict:
        return f"a map of names to {_plural(describe(_args(hint)[1]))}"
    if dataclasses.is_dataclass(hint):
        return f"a block with keys {', '.join(f.name for f in dataclasses.fields(hint))}"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(text: str) -> str:
    """A type's words in the plural: an integer >= 1 -> integers >= 1."""
    for article in ("a ", "an "):
        if text.startswith(article):
            noun, _, rest = text[len(article) :].partition(" ")
            return f"{noun}s {rest}".strip()
    return text


def child_type(hint: Any, name: str) -> Any | None:
    """The type of key `name` inside a value of type `hint` (a block's field, a map's
    entry), through `X | None`; None when `hint` says nothing about it."""
    while typing.get_origin(hint) is Annotated or _is_union(hint):
        arms = [a for a in _args(hint) if a is not type(None)]
        if typing.get_origin(hint) is not Annotated and len(arms) != 1:
            return None
        hint = arms[0]
    if typing.get_origin(hint) is dict:
        return _args(hint)[1]
    if dataclasses.is_dataclass(hint):
        return _hints(hint).get(name)
    return None


def _scalar_ok(value: Any, hint: type) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


_YAML_WORDS = ((None, "null"), (True, "true"), (False, "false"))


def _wrong(key: str, value: Any, hint: Any, p: ConfigProblems) -> None:
    if value == MISSING:
        p.add(key, f"missing; set it to {describe(hint)}")
    else:  # as a config file writes it: null, true, 'text'
        shown = next((w for v, w in _YAML_WORDS if value is v), repr(value))
        p.add(key, f"{shown} is not {describe(hint)}")


_CONFIG_TYPES = (int, float, bool, str, dict, list, type(None))


def from_config(hint: Any) -> bool:
    """Whether a config file can hold a value of type `hint`. A component's signature may
    name others (a Tensor): nothing to check there, and a union is checked on its config
    types alone (`float | Tensor` takes a number)."""
    origin = typing.get_origin(hint)
    if _is_union(hint):
        return any(from_config(a) for a in _args(hint))
    if origin is Annotated:
        return from_config(_args(hint)[0])
    return (
        hint in _CONFIG_TYPES
        or origin in (Literal, list, tuple, dict)
        or dataclasses.is_dataclass(hint)
    )


def check(value: Any, hint: Any, key: str, p: ConfigProblems) -> None:
    """Adds a problem for every value under `key` that is not of type `hint` (a type no
    config can hold, e.g. a Tensor in a component's signature, checks nothing)."""
    origin = typing.get_origin(hint)
    if hint is Any or not from_config(hint):
        return
    if origin is Annotated:
        base, *extra = _args(hint)
        inner = ConfigProblems()
        check(value, base, key, inner)
        ranges = [r for r in extra if isinstance(r, Range)]
        if inner or not all(r.holds(value) for r in ranges):
            _wrong(key, value, hint, p)
        return
    if _is_union(hint):
        if not any(_fits(value, a, key) for a in _args(hint) if from_config(a)):
            arms = [a for a in _args(hint) if a is not type(None) and from_config(a)]
            if len(arms) == 1 and dataclasses.is_dataclass(arms[0]) and isinstance(value, dict):
                check(value, arms[0], key, p)  # name the wrong key inside the block
            else:
                _wrong(key, value, hint, p)
        return
    if origin is Literal:
        if not any(v == value and type(v) is type(value) for v in _args(hint)):
            _wrong(key, value, hint, p)
        return
    _check_container(value, hint, origin, key, p)


def _fits(value: Any, hint: Any, key: str) -> bool:
    inner = ConfigProblems()
    check(value, hint, key, inner)
    return not inner


def _check_container(value: Any, hint: Any, origin: Any, key: str, p: ConfigProblems) -> None:
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _wrong(key, value, hint, p)
            return
        for i, v in enumerate(value):
            check(v, _args(hint)[0], f"{key}[{i}]", p)
    elif origin is dict:
        if not isinstance(value, dict):
            _wrong(key, value, hint, p)
            return
        for k, v in value.items():
            check(v, _args(hint)[1], f"{key}.{k}", p)
    elif dataclasses.is_dataclass(hint):
        _check_block(value, hint, key, p)
    elif isinstance(hint, type) and not _scalar_ok(value, hint):
        _wrong(key, value, hint, p)


def _is_required(f: dataclasses.Field) -> bool:
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return no_default or bool(f.metadata.get("required"))


def _check_block(value: Any, cls: type, key: str, p: ConfigProblems) -> None:
    if not isinstance(value, dict):
        _wrong(key, value, cls, p)
        return
    hints = _hints(cls)
    inner = ConfigProblems()
    for f in dataclasses.fields(cls):
        sub = f"{key}.{f.name}" if key else f.name
        if f.name in value and value[f.name] != MISSING:
            check(value[f.name], hints[f.name], sub, inner)
        elif _is_required(f):
            inner.add(sub, f"missing; set it to {describe(hints[f.name])}")
    rules: Callable[[dict], Iterable[tuple[str, str]]] | None = getattr(cls, "rules", None)
    if not inner and rules is not None:
        for sub, message in rules(value):
            inner.add(f"{key}.{sub}" if key else sub, message)
    p.extend(inner)
