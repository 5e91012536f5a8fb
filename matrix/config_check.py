"""Config-wide checks every stage runs before any model loads.

Hydra's struct mode already rejects `foo=1` for a key the composed config lacks, but not
`+foo=1`, nor a misspelled key inside a user's own YAML file (`generator=my_gen` from
`--config-dir`), nor an unknown `llm.roles.<role>`. The schema here is the union of every
key any file under conf/ defines, so a key no shipped option knows is almost surely a typo;
the error names it and suggests the closest known key.

Maps whose children are user-chosen names (`llm.backends.<name>`, `generator.sets.<name>`,
...) are matched with a `*` segment: their names are free, the keys inside them are not.
Blocks a backend or benchmark hands to its own constructor stay open (see `_OPEN`).
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from matrix.shard import SHARDED_STAGES
from matrix.validation import ConfigProblems

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Maps whose child names are chosen by the user; a `*` stands for any name.
_NAMED_MAPS = ("llm.backends", "generator.sets", "eval.benchmarks", "pipeline.steps")
# Subtrees passed whole to a constructor or template (their keys are the callee's business).
# A pipeline step's `config` is merged over the whole config, which rejects unknown keys.
_OPEN = (
    "llm.backends.*",
    "eval.benchmarks.*",
    "pipeline.steps.*.config",
    "run.stage_dirs",
    "hydra",
    "model.config",
    "trainer.fsdp",
    "logger.wandb.settings",
)
# Integer budgets: null means "no limit", zero means "do nothing", which is never intended.
_BUDGETS = (
    "simulation.max_rounds",
    "simulation.target_scenarios",
    "population.size",
    "generate.limit",
    "generate.batch_size",
    "eval.chunk_size",
    "data.limit",
)


def _normalize(path: str) -> str:
    for m in _NAMED_MAPS:
        if path.startswith(m + ".") and path.count(".") > m.count("."):
            rest = path[len(m) + 1 :].split(".", 1)
            return ".".join([m, "*", *rest[1:]])
    return path


def _walk(node: Any, prefix: str, out: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if str(k) == "defaults":
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(_normalize(path))
            if not any(_normalize(path) == o for o in _OPEN):
                _walk(v, path, out)


@lru_cache(maxsize=1)
def known_keys(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every (normalized) key path defined by some file under conf/."""
    keys: set[str] = {"hydra"}
    for f in sorted(conf_dir.rglob("*.yaml")):
        rel = f.relative_to(conf_dir)
        if rel.parts[0] == "hydra":
            continue
        text = f.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        is_global = text.lstrip().startswith("# @package _global_")
        prefix = "" if is_global or len(rel.parts) == 1 else ".".join(rel.parts[:-1])
        if prefix:
            keys.add(prefix)
        _walk(data, prefix, keys)
    return frozenset(keys)


def _suggest(path: str, known: frozenset[str], shown: str) -> str:
    """`path` is normalized (for lookup), `shown` the user's spelling (for the message)."""
    parent, _, leaf = path.rpartition(".")
    shown_parent = shown.rpartition(".")[0]
    siblings = sorted({k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent})
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{shown_parent + '.' if shown_parent else ''}{close[0]}`?"
    if siblings and len(siblings) <= 12:
        return f"known keys here: {', '.join(siblings)}"
    return "no shipped config defines it; remove it or fix the spelling"


def check_keys(
    cfg: DictConfig | dict, p: ConfigProblems, known: frozenset[str] | None = None
) -> None:
    """Adds a problem for every key no file under conf/ defines."""
    known = known or known_keys()
    data = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            norm = _normalize(path)
            if norm not in known:
                p.add(path, f"unknown key; {_suggest(norm, known, path)}")
                continue
            if norm not in _OPEN:
                walk(v, path)

    walk(data, "")


def _get(cfg: DictConfig, path: str) -> Any:
    return OmegaConf.select(cfg, path, default=None, throw_on_missing=False)


def check_budgets(cfg: DictConfig, p: ConfigProblems) -> None:
    for key in _BUDGETS:
        v = _get(cfg, key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            p.add(key, f"{v!r} is not an integer (use a number >= 1, or null where allowed)")
        elif v < 1:
            p.add(key, f"{v} would do no work; use a number >= 1 (or null for no limit)")
    for name, b in (_get(cfg, "eval.benchmarks") or {}).items():
        limit = b.get("limit") if isinstance(b, DictConfig) else None
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            p.add(f"eval.benchmarks.{name}.limit", f"{limit!r}: use a number >= 1 or null (all)")


def check_shard(cfg: DictConfig, p: ConfigProblems, stage: str) -> None:
    shard = _get(cfg, "shard")
    if shard is None:
        return
    index, count = shard.get("index"), shard.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        p.add("shard.count", f"{count!r} must be an integer >= 1")
        return
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        p.add("shard.index", f"{index!r} must be an integer in [0, shard.count={count})")
    if count > 1 and stage not in SHARDED_STAGES:
        p.add(
            "shard.count",
            f"{stage} cannot be sharded (only {', '.join(SHARDED_STAGES)}); use shard.count=1",
        )


def check_models(cfg: DictConfig, steps: list[tuple[DictConfig, str]], p: ConfigProblems) -> None:
    """Every server, model folder and API key the (config, stage) `steps` need is there
    (matrix.llm.preflight), unless llm.preflight.enabled=false."""
    pre = _get(cfg, "llm.preflight") or {}
    if not pre.get("enabled", True):
        return
    from matrix.llm.preflight import ModelCheck

    check = ModelCheck(float(pre.get("timeout") or 10))
    for step_cfg, stage in steps:
        check.stage(step_cfg, stage)
    check.report(p)


def check_config(cfg: DictConfig, stage: str, models: bool = True) -> None:
    """Every config-wide problem at once, raised as one ConfigError (exit code 2 via the CLI).
    `models`: also check that the models the stage calls can be reached (check_models)."""
    p = ConfigProblems()
    check_keys(cfg, p)
    check_budgets(cfg, p)
    check_shard(cfg, p, stage)
    roles = _get(cfg, "llm.roles") or {}
    backends = _get(cfg, "llm.backends") or {}
    for role, rc in roles.items():
        b = rc.get("backend") if isinstance(rc, DictConfig) else None
        if b is not None and b not in backends:
            p.add(
                f"llm.roles.{role}.backend", f"'{b}' is not in llm.backends ({', '.join(backends)})"
            )
    if models and not p:
        check_models(cfg, [(cfg, stage)], p)
    p.raise_if_any(stage)
