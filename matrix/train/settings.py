"""The train stage's typed config schema (matrix.common.schema), checked against the composed
config before any model loads (matrix.core.value_check.check_schemas). Only `data.limit` so
far: the schemas of `train`, `optimizer` and `scheduler` come with their components."""

from __future__ import annotations

from dataclasses import dataclass

from matrix.common.schema import Count
from matrix.core.settings import Shared


@dataclass(frozen=True)
class Data:
    """conf/data/: the keys not named here are not typed yet (the key check still knows them)."""

    limit: Count | None = None  # first N rows only


@dataclass(frozen=True)
class TrainSettings(Shared):
    data: Data
