"""The typed-schema mechanism: each kind of field, the words of its message, all at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from matrix.common.schema import Count, Fraction, Natural, check, describe, required
from matrix.common.validation import ConfigProblems


@dataclass(frozen=True)
class Inner:
    mode: Literal["a", "b"]
    share: Fraction = 0.5


@dataclass(frozen=True)
class Outer:
    count: Count
    inner: Inner
    limit: Count | None = None
    names: list[str] = field(default_factory=list)
    blocks: dict[str, Inner] = field(default_factory=dict)
    flag: bool = False
    free: Any = None
    index: Natural = 0

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        ok = block.get("index", 0) < block["count"]
        return [] if ok else [("index", "must be below count")]


def problems(value: Any, hint: Any = Outer, key: str = "top") -> dict[str, str]:
    p = ConfigProblems()
    check(value, hint, key, p)
    return dict(p.items)


GOOD = {"count": 2, "inner": {"mode": "a"}}


def test_a_good_block_has_no_problem():
    assert problems(GOOD) == {}
    assert problems({**GOOD, "limit": None, "names": ["x"], "free": {"any": [1]}}) == {}
    assert problems({**GOOD, "unknown": 1}) == {}  # unknown keys: the key check's job


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"count": "3"}, "top.count", "'3' is not an integer >= 1"),
        ({"count": 0}, "top.count", "0 is not an integer >= 1"),
        ({"count": True}, "top.count", "true is not an integer >= 1"),
        ({"count": None}, "top.count", "null is not an integer >= 1"),
        ({"count": 1.5}, "top.count", "1.5 is not an integer >= 1"),
        ({"limit": 0}, "top.limit", "0 is not an integer >= 1 or null"),
        ({"inner": {"mode": "c"}}, "top.inner.mode", "'c' is not one of 'a', 'b'"),
        ({"inner": {"mode": "a", "share": 2}}, "top.inner.share", "2 is not a number in [0, 1]"),
        ({"inner": "a"}, "top.inner", "'a' is not a block with keys mode, share"),
        ({"names": "x"}, "top.names", "'x' is not a list of strings"),
        ({"names": ["x", 3]}, "top.names[1]", "3 is not a string"),
        ({"blocks": {"b1": {"mode": 1}}}, "top.blocks.b1.mode", "1 is not one of 'a', 'b'"),
        ({"flag": "yes"}, "top.flag", "'yes' is not true or false"),
        ({"count": "???"}, "top.count", "missing; set it to an integer >= 1"),
        ({"index": 2}, "top.index", "must be below count"),
    ],
)
def test_each_wrong_value_is_named_with_what_the_key_takes(change, key, message):
    assert problems({**GOOD, **change}) == {key: message}


def test_a_missing_required_key_is_named():
    assert problems({"inner": {}}) == {
        "top.count": "missing; set it to an integer >= 1",
        "top.inner.mode": "missing; set it to one of 'a', 'b'",
    }


def test_every_problem_is_listed_at_once_and_rules_wait_for_good_types():
    got = problems({"count": "x", "index": 5, "inner": {"mode": "z"}, "flag": 1})
    assert set(got) == {"top.count", "top.inner.mode", "top.flag"}


def test_a_literal_is_not_matched_by_an_equal_value_of_another_type():
    assert problems(1, Literal[True]) == {"top": "1 is not one of True"}


def test_a_required_field_with_a_default_is_still_required():
    @dataclass(frozen=True)
    class Base:
        x: int = 0

    @dataclass(frozen=True)
    class Sub(Base):
        name: str = required()

    assert problems({}, Sub) == {"top.name": "missing; set it to a string"}


def test_describe_says_what_a_type_takes():
    assert describe(Count | None) == "an integer >= 1 or null"
    assert describe(list[Literal["x", "y"]]) == "a list of one of 'x', 'y'"
    assert describe(dict[str, int]) == "a map of names to integers"


class Tensor:
    """Stands for a type a config file cannot hold (a component's signature may name one)."""


def test_types_no_config_holds_check_nothing_and_drop_out_of_unions():
    assert problems("anything", Tensor) == {}
    assert problems(0.1, float | Tensor) == {}
    assert problems("big", float | Tensor) == {"top": "'big' is not a number"}
    assert problems([0.9, "x"], tuple[float | Tensor, float | Tensor]) == {
        "top[1]": "'x' is not a number"
    }
