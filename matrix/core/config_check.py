"""Config-wide checks every stage runs before any model loads.

Hydra's struct mode already rejects `foo=1` for a key the composed config lacks, but not
`+foo=1`, nor a misspelled key inside a user's own YAML file (`generator=my_gen` from
`--config-dir`), nor an unknown `llm.roles.<role>`. The schema here is the union of every
key any file under conf/ defines, so a key no shipped option knows is almost surely a typo;
the error names it and suggests the closest known key.

Maps whose children are user-chosen names (`llm.backends.<name>`, `generator.sets.<name>`,
...) are matched with a `*` segment: their names are free, the keys inside them are not.
Benchmark names are fixed, so `eval.benchmarks.<name>.<option>` is checked against the
options conf/eval/ defines for that very benchmark. Blocks handed whole to a component are
checked against that component the torchtune way (`check_components`): a backend's keys
against its class's constructor (`_target_`), sampling blocks against `Sampling`'s fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from matrix.common.validation import ConfigProblems
from matrix.core.registry import STAGES
from matrix.core.value_check import value_problems

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Maps whose child names are chosen by the user; a `*` stands for any name.
_NAMED_MAPS = ("llm.backends", "generator.sets", "pipeline.steps", "train.callbacks")
# Subtrees passed whole to a constructor or template (their keys are the callee's business).
# A pipeline step's `config` is merged over the whole config, which rejects unknown keys.
_OPEN = (
    "llm.backends.*",
    "eval.sampling",
    "eval.benchmarks.*.sampling",
    "eval.benchmarks.*.judge_sampling",
    "pipeline.steps.*.config",
    "run.stage_dirs",
    "hydra",
    "model.config",
    "trainer.fsdp",
    "logger.wandb.settings",
    "data.columns",  # a field of the rows or a key of data.format (matrix.train.preflight)
    "logger.lightning",  # any Lightning logger's options (matrix.train.loggers.check_logger)
    # the train stage's components: options checked against their _target_'s signature
    # (matrix.train.components)
    "train.objective",
    "optimizer",
    "scheduler",
    "train.callbacks.*",
    # a set's seed source, when a `_target_` block (matrix.gen.sources.build_source builds it)
    "generator.sets.*.source",
    "generate.rejected_backend",  # what runs generate.rejected_model: checked as a backend
)
# Maps that also take a user's block naming its class by `_target_` (the class checks it).
_COMPONENT_MAPS = ("eval.benchmarks",)


def _is_component(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


# A block whose keys are those of another block.
_SAME_KEYS_AS = {"generator.sets.*.retrieval": "generate.retrieval"}


def _normalize(path: str) -> str:
    for m in _NAMED_MAPS:
        if path.startswith(m + ".") and path.count(".") > m.count("."):
            rest = path[len(m) + 1 :].split(".", 1)
            return ".".join([m, "*", *rest[1:]])
    return path


def _is_open(path: str) -> bool:
    """Whether the (normalized) path is a block whose keys the component checks."""
    if path in _OPEN:
        return True
    parts = path.split(".")
    in_benchmark = len(parts) == 4 and parts[:2] == ["eval", "benchmarks"]
    return in_benchmark and parts[3] in ("sampling", "judge_sampling")


def _walk(node: Any, prefix: str, out: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if str(k) == "defaults":
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(_normalize(path))
            if not _is_open(_normalize(path)):
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
        package = re.match(r"\s*# @package ([\w.]+)\s*\n", text)
        if package and package.group(1) != "_global_":
            prefix = package.group(1)  # a group placed elsewhere (objective -> train.objective)
        if prefix:
            keys.add(prefix)
        _walk(data, prefix, keys)
    # Blocks that take the keys of another block: a generator set's `retrieval:` overrides
    # generate.retrieval (matrix.gen.config._retrieval).
    keys |= {m + ".*" for m in _NAMED_MAPS}  # a name of the user's, even where conf/ has none
    for alias, source in _SAME_KEYS_AS.items():
        keys |= {alias + k[len(source) :] for k in keys if k.startswith(source + ".")}
    return frozenset(keys)


# Keys that moved into the group of the stage that owns them: the old spelling is refused
# with the new one named (every shipped preset and doc uses the new one).
MOVED = {
    "objective": "train.objective",
    "dpo": "train.objective",  # DPO's options, with objective=dpo
    "checkpoint": "train.checkpoint",
    "simulation_dir": "generate.simulation_dir",
    "rejected_model": "generate.rejected_model",
}


# Keys that no longer exist, with what replaced them.
REPLACED = {
    "communication.mode": (
        "replaced by `communication._target_` (the mode's class, e.g. "
        "matrix.sim.communication.RandomCommunication); pick a shipped mode with "
        "`communication=structured|random|none` (conf/communication/<name>.yaml)"
    ),
    "train.dpo": (
        "replaced by the objective's own options: `objective=dpo` (conf/objective/dpo.yaml), "
        "then `train.objective.beta=...`, `train.objective.reference=model|precomputed`"
    ),
    "optimizer.name": (
        "replaced by `optimizer._target_` (the optimizer's class, e.g. torch.optim.AdamW); "
        "pick a shipped one with `optimizer=adamw|adamw_8bit` (conf/optimizer/<name>.yaml)"
    ),
    "data.fields": (
        "replaced by `data.columns.<key of data.format>=<the dataset's key>`, e.g. "
        "`+data.columns.instruction=question` (one map for a table's columns and a format's keys)"
    ),
    "scheduler.name": (
        "replaced by `scheduler._target_` (a function or class that builds the schedule, e.g. "
        "matrix.train.optim.cosine_schedule); `scheduler=cosine` (conf/scheduler/<name>.yaml)"
    ),
}


def _suggest(path: str, known: frozenset[str], shown: str) -> str:
    """`path` is normalized (for lookup), `shown` the user's spelling (for the message)."""
    for old, why in REPLACED.items():
        if path == old or path.startswith(old + "."):
            return why
    root, _, rest = shown.partition(".")
    if root in MOVED:
        new = MOVED[root] + ("." + rest if rest else "")
        return f"moved to `{new}` (the owning stage's group); write `{new}` instead"
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
            if norm not in known and prefix in _COMPONENT_MAPS and _is_component(v):
                continue  # a component of the user's, named by _target_ (its class checks it)
            if norm not in known:
                p.add(path, f"unknown key; {_suggest(norm, known, path)}")
                continue
            if not _is_open(norm):
                walk(v, path)

    walk(data, "")


def _get(cfg: DictConfig, path: str) -> Any:
    return OmegaConf.select(cfg, path, default=None, throw_on_missing=False)


def check_models(
    cfg: DictConfig,
    steps: list[tuple[DictConfig, str]],
    p: ConfigProblems,
    skip: Iterable[str] = (),
) -> None:
    """Every server, model folder and API key the (config, stage) `steps` need is there
    (matrix.llm.preflight), unless llm.preflight.enabled=false; backends named in `skip`
    were handed over in-process."""
    pre = _get(cfg, "llm.preflight") or {}
    if not pre.get("enabled", True):
        return
    from matrix.llm.preflight import ModelCheck

    check = ModelCheck(float(pre.get("timeout") or 10))
    for step_cfg, stage in steps:
        # "pipeline" (check_config of the whole tree) is no stage: no roles of its own
        roles = STAGES[stage].llm_roles(step_cfg) if stage in STAGES else []
        check.stage(step_cfg, stage, roles, skip=set(skip))
    check.report(p)


def check_config(cfg: DictConfig, stage: str, models: bool = True) -> None:
    """Every config-wide problem at once, raised as one ConfigError (exit code 2 via the CLI);
    `models`: also whether the models the stage calls can be reached (check_models)."""
    p = config_problems(cfg, stage)
    if models and not p:
        check_models(cfg, [(cfg, stage)], p)
    p.raise_if_any(stage)


def check_stage(cfg: DictConfig, stage: str, provided_backends: Iterable[str] = ()) -> None:
    """The one check a stage runs before any model loads: the config-wide problems, the
    stage's own validator (matrix.core.registry) and whether the models it calls can be
    reached (check_models), all listed in one ConfigError. `provided_backends` are backends
    handed to the stage in-process, by name (nothing to reach)."""
    provided = set(provided_backends)
    keys, values = key_problems(cfg), value_problems(cfg, stage, provided)
    p = ConfigProblems()
    p.extend(keys)
    p.extend(values)
    if not keys:  # a typo'd key can make the stage's validator fail on a missing one
        p.extend(_validator_problems(cfg, stage, values_ok=not values))
    if not p:
        check_models(cfg, [(cfg, stage)], p, skip=provided)
    p.raise_if_any(stage)


def _fields_of(target: Any) -> set[str] | None:
    """The keyword arguments `target` (a class or a function) accepts; None when it takes
    any (**kwargs)."""
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target)}
    params = inspect.signature(target).parameters.values()
    if any(x.kind is inspect.Parameter.VAR_KEYWORD for x in params):
        return None
    return {x.name for x in params if x.name != "self"}


def _check_fields(
    block: Any, target: Any, key: str, p: ConfigProblems, extra: tuple[str, ...] = ()
) -> None:
    if not isinstance(block, dict):
        return
    accepted = _fields_of(target)
    if accepted is None:
        return
    accepted |= set(extra)
    for k in block:
        if str(k).startswith("_") or k in accepted:
            continue
        close = difflib.get_close_matches(str(k), sorted(accepted), n=1, cutoff=0.6)
        hint = f"did you mean `{key}.{close[0]}`?" if close else f"accepted: {sorted(accepted)}"
        name = getattr(target, "__qualname__", str(target))
        p.add(f"{key}.{k}", f"unknown option of {name}; {hint}")


def check_components(cfg: DictConfig | dict, p: ConfigProblems) -> None:
    """Blocks handed whole to a component, checked against the component's own signature."""
    from matrix.llm.protocol import Sampling
    from matrix.llm.roles import BACKEND_EXTRA_KEYS

    data = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=False)
    llm = data.get("llm") or {}
    used = {r.get("backend") for r in (llm.get("roles") or {}).values() if isinstance(r, dict)}
    rejected = (data.get("generate") or {}).get("rejected_backend")  # conf/rejected_backend/
    blocks = [(f"llm.backends.{n}", b, n in used) for n, b in (llm.get("backends") or {}).items()]
    for key, b, needed in [*blocks, ("generate.rejected_backend", rejected, rejected is not None)]:
        target = b.get("_target_") if isinstance(b, dict) else None
        if not target:
            if needed:  # an unused block is never built
                p.add(f"{key}._target_", "missing; name its class, e.g. matrix.llm.hf.HFBackend")
            continue
        module, _, attr = str(target).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as e:
            p.add(f"{key}._target_", f"cannot import {target} ({e})")
            continue
        _check_fields(b, cls, key, p, extra=BACKEND_EXTRA_KEYS)
    ev = data.get("eval") or {}
    _check_fields(ev.get("sampling"), Sampling, "eval.sampling", p)
    for name, b in (ev.get("benchmarks") or {}).items():
        for block in ("sampling", "judge_sampling"):
            if isinstance(b, dict):
                _check_fields(b.get(block), Sampling, f"eval.benchmarks.{name}.{block}", p)


def _validator_problems(cfg: DictConfig, stage: str, values_ok: bool) -> ConfigProblems:
    """The stage's own validator: what needs more than typed values (files, folders, template
    fields). It runs even after a wrong value, so that every problem is listed at once; its
    failure on that value (already reported, with what the key takes) adds nothing."""
    try:
        return STAGES[stage].validate(cfg)
    except Exception:
        if values_ok:
            raise
        return ConfigProblems()


def config_problems(
    cfg: DictConfig, stage: str, provided_backends: Iterable[str] = ()
) -> ConfigProblems:
    """Unknown keys (with a suggestion), then the values (value_problems)."""
    p = key_problems(cfg)
    p.extend(value_problems(cfg, stage, provided_backends))
    return p


def key_problems(cfg: DictConfig) -> ConfigProblems:
    """Keys no file under conf/ defines, and options a component does not take."""
    p = ConfigProblems()
    check_keys(cfg, p)
    check_components(cfg, p)
    return p
