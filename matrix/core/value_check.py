"""The values of a composed config: each against the typed schema of the stage that reads
it (matrix.core.registry `schema_ref`, a dataclass of matrix.common.schema types), plus the
rules that relate keys of different blocks (a role's backend exists, a stage may be sharded).
Part of the one check every stage runs (matrix.core.config_check.check_stage)."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from matrix.common.schema import MISSING, check, child_type
from matrix.common.validation import ConfigProblems
from matrix.core.registry import SHARDED_STAGES, STAGES


def schema_of(stage: str) -> dict[str, Any]:
    """The typed schema of each root key `stage` reads (matrix.core.registry `schema_ref`);
    for the whole loop ("pipeline"), of every stage's."""
    stages = list(STAGES.values()) if stage not in STAGES else [STAGES[stage]]
    roots: dict[str, Any] = {}
    for s in stages:
        roots.update(typing.get_type_hints(s.schema(), include_extras=True))
    return roots


def key_type(key: str) -> Any | None:
    """The schema type of a dotted key of any stage (`generator.sets.general.kind`); None
    where no schema types it (an open block, a key no schema names)."""
    root, *rest = key.split(".")
    hint = schema_of("pipeline").get(root)
    for name in rest:
        if hint is None or hint is Any:
            return None
        hint = child_type(hint, name)
    return None if hint is Any else hint


def check_schemas(cfg: DictConfig, stage: str, p: ConfigProblems) -> None:
    """Every value the stage reads against its typed schema (matrix.common.schema): a wrong
    type, an unknown choice, a value out of range or a missing required one, each named by
    its full key with what the key takes."""
    for root, hint in schema_of(stage).items():
        if root not in cfg:
            check(MISSING, hint, root, p)
            continue
        try:
            if OmegaConf.is_missing(cfg, root):
                value = MISSING
            elif OmegaConf.is_config(node := cfg[root]):
                value = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
            else:
                value = node
        except OmegaConfBaseException as e:
            p.add(root, f"cannot resolve its values: {e}")
            continue
        check(value, hint, root, p)


def check_shard(cfg: DictConfig, p: ConfigProblems, stage: str) -> None:
    """Its values are typed (matrix.core.settings.ShardSettings); here: whether `stage` splits."""
    count = OmegaConf.select(cfg, "shard.count", default=None)
    if isinstance(count, int) and count > 1 and stage not in SHARDED_STAGES:
        p.add(
            "shard.count",
            f"{stage} cannot be sharded (only {', '.join(SHARDED_STAGES)}); use shard.count=1",
        )


def value_problems(
    cfg: DictConfig, stage: str, provided_backends: Iterable[str] = ()
) -> ConfigProblems:
    """Values against the stage's typed schema, shard settings and role backends."""
    p = ConfigProblems()
    check_schemas(cfg, stage, p)
    check_shard(cfg, p, stage)
    roles = OmegaConf.select(cfg, "llm.roles", default=None) or {}
    backends = OmegaConf.select(cfg, "llm.backends", default=None) or {}
    provided = set(provided_backends)
    for role, rc in roles.items():
        b = rc.get("backend") if isinstance(rc, DictConfig) else None
        if b is not None and b not in backends and b not in provided:
            p.add(
                f"llm.roles.{role}.backend", f"'{b}' is not in llm.backends ({', '.join(backends)})"
            )
    return p
