"""The whole loop in one command: simulate -> generate -> train -> evaluate.

    python -m matrix.pipeline experiment=demo
    python -m matrix.pipeline experiment=comm_ablation_tiny -m communication=none,random,structured

One composed config (conf/pipeline.yaml) feeds every stage; each stage hashes only the keys
it depends on (matrix.core.registry). A step is reused when its manifest says it finished
with the same config hash *and* its inputs are unchanged (matrix.core.reuse); otherwise it
runs again, and an unfinished one resumes from its own checkpoint.

`pipeline.stages` lists the steps in order. A step is a stage, or a named step from
`pipeline.steps`: a stage run with its own settings merged over the composed config, into
its own folder (experiment=paper_matrix_tuned trains SFT as `train_sft`, then DPO from that
model as `train`). Reuse and resume work per step, as for any stage.

In a multirun each finished job adds its run dir to the sweep dir's arms.txt, and
`CompareOnMultirunEnd` (a Hydra callback in conf/pipeline.yaml) writes the comparison of all
arms (matrix.analysis.compare) into the sweep dir when the last job is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from matrix.analysis.arms import ARMS_FILE
from matrix.common.secrets import is_secret_key
from matrix.core.config_check import check_models, config_problems
from matrix.core.registry import STAGES
from matrix.core.reuse import reuse_decision
from matrix.core.stage import stage_dir
from matrix.core.validation import ConfigError, ConfigProblems

log = logging.getLogger("matrix.pipeline")


# Overrides that say where or how a job runs, not what it computes: left out of arm names, so
# `experiment=x debug=tiny llm.backends...=... -m communication=a,b` gives arms
# `communication=a` and `communication=b`. (pipeline.steps stays: it changes results.)
_NOT_ARM = (
    "experiment",
    "experiment_name",
    "debug",
    "run",
    "paths",
    "logger",
    "llm.backends",
    "pipeline.stages",
    "pipeline.reuse",
    "pipeline.objective",
    "hydra",
)
# A folder name has at most 255 bytes; arm_name shortens a longer arm (keeping a hash).
_ARM_MAX_BYTES = 240


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].replace("/", ".")


def arm_name(overrides: list[str], swept: Iterable[str] = ()) -> str:
    """A job's arm: its overrides that change results as `key=value,key=value`, the `swept`
    keys (the sweeper's params) first, the rest sorted. Too long for a folder name, it keeps
    the swept overrides only (or, with none known, its start) and ends in a hash of the whole."""
    swept = set(swept)
    keep = [
        o
        for o in overrides
        if not any(_override_key(o) == k or _override_key(o).startswith(k + ".") for k in _NOT_ARM)
        and not is_secret_key(_override_key(o))  # a key never names a folder
    ]
    keep.sort(key=lambda o: (_override_key(o) not in swept, o))
    name = ",".join(o.replace("/", "_") for o in keep)
    if len(name.encode()) <= _ARM_MAX_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = ",".join(o.replace("/", "_") for o in keep if _override_key(o) in swept) or name
    return head.encode()[: _ARM_MAX_BYTES - 9].decode(errors="ignore") + f"~{digest}"


def name_sweep_job(cfg: DictConfig) -> None:
    """In a multirun, each job gets its own run dir named by its overrides, under one sweep id."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            swept = hc.sweeper.get("params") or {}
            arm = arm_name(list(hc.overrides.task), swept) or str(hc.job.num)
            cfg.run.sweep_id = (
                cfg.run.sweep_id or f"{cfg.run.name}-{hc.sweep.dir.rstrip('/').split('/')[-1]}"
            )
            cfg.run.name = f"{cfg.run.name}/{arm}"


@dataclass(frozen=True)
class Step:
    """One entry of pipeline.stages: `stage` run with `cfg`, writing to runs/<run.name>/<name>/."""

    name: str
    stage: str
    cfg: DictConfig


def pipeline_steps(cfg: DictConfig) -> list[Step]:
    """The steps of pipeline.stages with their configs, every problem reported at once before
    any step starts: unknown stages, a folder used twice, unknown keys in a step's config."""
    defs = cfg.pipeline.get("steps") or {}
    p = ConfigProblems()
    steps: list[Step] = []
    for name in cfg.pipeline.stages:
        name = str(name)
        spec = defs.get(name) or {}
        stage = str(spec.get("stage") or name)
        if stage not in STAGES:
            key = f"pipeline.steps.{name}.stage" if name in defs else "pipeline.stages"
            p.add(
                key,
                f"'{stage}' is not a stage ({', '.join(STAGES)}); a named step needs "
                f"pipeline.steps.{name}.stage",
            )
            continue
        try:
            # struct merge: a key the composed config lacks is a typo, not a new setting
            step_cfg = OmegaConf.merge(cfg, spec.get("config") or {})
        except ConfigKeyError as e:
            p.add(f"pipeline.steps.{name}.config", f"unknown key {e.full_key}")
            continue
        if name != stage:
            with open_dict(step_cfg):
                step_cfg.run.stage_dirs[stage] = name
        steps.append(Step(name, stage, step_cfg))
    if len({s.name for s in steps}) < len(steps):
        p.add("pipeline.stages", "a step is listed twice; it would overwrite its own folder")
    for s in steps:  # every step's typos at once, before the first step starts
        p.extend(config_problems(s.cfg, s.stage))
    p.raise_if_any("pipeline")
    return steps


def helper_rank() -> bool:
    """Whether this process is rank 1..n-1 of a multi-process training run. Lightning starts
    those ranks by rerunning the command; they take part in the train steps only."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) != 0
    return False


def run_pipeline(cfg: DictConfig) -> dict:
    name_sweep_job(cfg)
    results = {}
    helper = helper_rank()
    steps = pipeline_steps(cfg)
    # Before any work: the servers, model folders and keys of every step that will run (a
    # reused step calls no model; rank 0 simulates, generates and evaluates).
    runs = [
        s
        for s in steps
        if (not helper or s.stage == "train")
        and not (cfg.pipeline.reuse and reuse_decision(s.cfg, s.stage).reuse)
    ]
    p = ConfigProblems()
    check_models(cfg, [(s.cfg, s.stage) for s in runs], p)
    p.raise_if_any("pipeline")
    for n, step in enumerate(steps):
        if helper and step.stage != "train":
            # rank 0 simulates, generates and evaluates; a later train step reads this one's
            # output (paper_matrix_tuned's DPO pairs), so wait until rank 0 has finished it
            if any(s.stage == "train" for s in steps[n + 1 :]):
                wait_for_step(step)
            continue
        decision = reuse_decision(step.cfg, step.stage)
        if decision.reuse and cfg.pipeline.reuse:
            log.info("%s: reusing finished run: %s", step.name, decision.why)
            results[step.name] = decision.manifest.get("counts")
            continue
        log.info("%s: running (%s)", step.name, decision.why)
        results[step.name] = STAGES[step.stage].run(step.cfg)
    if not helper:
        record_arm(cfg)
    return results


def wait_for_step(step: Step, poll_s: float = 2.0) -> None:
    """Block a helper rank until rank 0's run of `step` has finished (its manifest says so)."""
    while not reuse_decision(step.cfg, step.stage).reuse:
        time.sleep(poll_s)


def record_arm(cfg: DictConfig) -> None:
    """Add this job's run dir to the sweep dir's arms file (multirun only)."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode != RunMode.MULTIRUN:
        return
    sweep = Path(hc.sweep.dir)
    sweep.mkdir(parents=True, exist_ok=True)
    run_dir = stage_dir(cfg, "train").parent.resolve()
    with open(sweep / ARMS_FILE, "a", encoding="utf-8") as f:
        f.write(f"{run_dir}\n")


class CompareOnMultirunEnd(Callback):
    """After the last job of a pipeline multirun: the comparison report, into the sweep dir."""

    def __init__(self, enabled: bool = True, lineage_answers: int = 3) -> None:
        self.enabled = enabled
        self.lineage_answers = lineage_answers

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not self.enabled or not (sweep / ARMS_FILE).exists():
            return
        from matrix.analysis.compare import compare
        from matrix.common.embeddings import Encoder

        encoder = Encoder(config.embedding.model, cache_dir=config.paths.cache_dir)
        try:
            compare([sweep], sweep, lineage_answers=self.lineage_answers, encoder=encoder)
        except Exception:
            # The arms' results are on disk either way; a failed report must not fail the sweep.
            log.exception("compare failed; rerun: python -m matrix.compare %s", sweep)


def objective_value(cfg: DictConfig) -> float:
    """`pipeline.objective` (`<benchmark>/<metric>`) from this run's evaluate/scores.json."""
    bench, _, metric = str(cfg.pipeline.objective).partition("/")
    path = stage_dir(cfg, "evaluate") / "scores.json"
    scores = json.loads(path.read_text(encoding="utf-8"))["scores"]
    if metric not in scores.get(bench, {}):
        raise ConfigError(
            f"pipeline.objective={cfg.pipeline.objective}: no such score in {path}; "
            f"use one of {[f'{b}/{k}' for b, s in scores.items() for k in s]}"
        )
    return float(scores[bench][metric])


def flags_first(argv: list[str]) -> list[str]:
    """Move -m/--multirun before the overrides: Hydra's argparse rejects overrides that follow
    it (`experiment=x -m communication=a,b`), the natural way to write a sweep."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in flags]
