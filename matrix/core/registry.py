"""The stages of the loop, one typed record each: the only place that says what a stage is.

`pipeline`, `cli`, `merge`, `shard`, `stage` (config hashing) and `analysis.arms` read
`STAGES`; adding or renaming a stage is one edit here. Functions are named as
`module:attribute` and imported on first use, so reading the registry (the config check,
`--help`, the comparison report) never imports torch or a model library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from matrix.common.validation import ConfigProblems


def _load(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Stage:
    """One stage: what it runs, which config keys its outputs depend on, how it is checked
    before any model loads, and (for a stage that splits its work) how its shards join."""

    name: str
    run_ref: str  # "module:function", called with the composed config
    hash_keys: tuple[str, ...]  # the root config keys its outputs depend on (config hash)
    validate_ref: str  # "module:function" returning ConfigProblems; never raises for config
    merge_ref: str | None = None  # "module:function" joining shards; None: runs whole
    # "module:Class": the typed schema of the keys it reads, a dataclass whose fields are root
    # keys (matrix.common.schema), checked before any model loads; subclass
    # matrix.core.settings.Shared (run, paths, shard, seed) or LLMStage (those and llm)
    schema_ref: str = "matrix.core.settings:Shared"
    hash_exclude: tuple[str, ...] = ()  # dotted keys inside hash_keys that never change results
    # dotted keys (`*` for any child) a run may change and still resume the folder's earlier
    # run, which it then extends (e.g. a higher target); any other change starts fresh
    resume_exclude: tuple[str, ...] = ()
    # "module:function": (cfg) -> the llm.roles the stage calls with that config, the one place
    # that says so: its validator and the model check before it runs (matrix.llm.preflight)
    # read it. None: the stage calls no LLM role
    roles_ref: str | None = None

    @property
    def shardable(self) -> bool:
        return self.merge_ref is not None

    def run(self, cfg: DictConfig) -> Any:
        return _load(self.run_ref)(cfg)

    def validate(self, cfg: DictConfig) -> ConfigProblems:
        return _load(self.validate_ref)(cfg)

    def schema(self) -> type:
        return _load(self.schema_ref)

    def llm_roles(self, cfg: DictConfig) -> list[str]:
        return list(_load(self.roles_ref)(cfg)) if self.roles_ref else []

    def merge_fn(self) -> Callable[..., Any]:
        if self.merge_ref is None:
            raise ValueError(f"{self.name} runs whole; it has no shards to merge")
        return _load(self.merge_ref)


# The config keys each stage's outputs depend on. The config hash covers only these, so the
# same stage composed from its own script or from the whole-loop pipeline hashes the same, and
# a change to training settings does not invalidate a finished simulation.
# Keys inside an LLM stage's hashed groups that never change its results: raising the budget
# of a budget-stopped run and running it again continues it.
NO_RESULT_KEYS = ("llm.budget",)
# where generate.rejected_backend=vllm's server runs, on how many GPUs, and how patiently it
# is reached: a rerun on another port, server or GPU count continues the same run
SERVING_KEYS = tuple(
    f"generate.rejected_backend.{k}"
    for k in ("base_url", "port", "log_path", "ready_timeout", "timeout", "max_retries",
              "retry_max_wait", "max_concurrency", "tensor_parallel_size", "data_parallel_size")
)  # fmt: skip

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            name="simulate",
            run_ref="matrix.sim.run:run_simulate",
            hash_keys=(
                "seed",
                "llm",
                "population",
                "communication",
                "agent",
                "simulation",
                "scenario",
                "embedding",
                "shard",
            ),
            hash_exclude=NO_RESULT_KEYS,
            validate_ref="matrix.sim.run:validate",
            roles_ref="matrix.sim.run:llm_roles",
            schema_ref="matrix.sim.settings:SimulateSettings",
            merge_ref="matrix.sim.merge:merge_shards",
        ),
        Stage(
            name="generate",
            run_ref="matrix.gen.run:run_generate",
            hash_keys=(
                "seed",
                "llm",
                "generator",
                "generate",
                "embedding",
                "shard",
            ),
            hash_exclude=(*NO_RESULT_KEYS, *SERVING_KEYS),
            resume_exclude=("generator.sets.*.target",),
            validate_ref="matrix.gen.config:validate",
            roles_ref="matrix.gen.config:llm_roles",
            schema_ref="matrix.gen.settings:GenerateSettings",
            merge_ref="matrix.gen.merge:merge_shards",
        ),
        Stage(
            name="train",
            run_ref="matrix.train.run:run_train",
            hash_keys=(
                "seed",
                "data",
                "model",
                "optimizer",
                "scheduler",
                "trainer",
                "train",
            ),
            # how often it checkpoints, whether it resumes, its report and the licence its
            # model card names never change its results
            hash_exclude=(
                "train.checkpoint",
                "train.callbacks.report",
                "model.license",
                "model.license_notice",
            ),
            validate_ref="matrix.train.preflight:validate",
            schema_ref="matrix.train.settings:TrainSettings",
        ),
        Stage(
            name="evaluate",
            run_ref="matrix.eval.run:run_evaluate",
            hash_keys=("seed", "llm", "eval", "shard"),
            hash_exclude=NO_RESULT_KEYS,
            validate_ref="matrix.eval.run:validate",
            roles_ref="matrix.eval.run:llm_roles",
            schema_ref="matrix.eval.settings:EvaluateSettings",
            merge_ref="matrix.eval.merge:merge_shards",
        ),
    )
}

SHARDED_STAGES = tuple(name for name, s in STAGES.items() if s.shardable)


def get_stage(name: str, key: str = "stage") -> Stage:
    """The registered stage `name`; a ConfigError naming `key` and the known stages if none."""
    from matrix.common.validation import ConfigError

    if name not in STAGES:
        raise ConfigError(f"{key}: '{name}' is not a stage; use one of {', '.join(STAGES)}")
    return STAGES[name]
