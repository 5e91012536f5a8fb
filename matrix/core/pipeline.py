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

A multirun (`-m`) runs the whole loop per arm, into its own run dir (matrix.core.sweep, the
same for every entry point); the comparison of all arms lands in the sweep dir.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from matrix.common.validation import ConfigError, ConfigProblems
from matrix.core.config_check import check_models, config_problems
from matrix.core.folder_lock import stage_writer
from matrix.core.registry import STAGES
from matrix.core.reuse import reuse_decision
from matrix.core.stage import stage_dir
from matrix.core.sweep import helper_rank, name_sweep_job, record_arm

log = logging.getLogger("matrix.pipeline")


@dataclass(frozen=True)
class Step:
    """One entry of pipeline.stages: `stage` run with `cfg`, writing to runs/<run.name>/<name>/."""

    name: str
    stage: str
    cfg: DictConfig


def split_components(overlay: Any) -> tuple[DictConfig, dict[str, Any]]:
    """A step's config less its component blocks (those with `_target_`), and those blocks by
    dotted path: a component block replaces the composed one whole (a merge would keep the
    other component's options, e.g. DPO's `beta` under an SFT objective)."""
    rest = OmegaConf.to_container(OmegaConf.create(overlay), resolve=False)
    found: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key in list(node):
            value, path = node[key], f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and "_target_" in value:
                found[path] = node.pop(key)
            elif isinstance(value, dict):
                walk(value, path)

    walk(rest, "")
    return OmegaConf.create(rest), found


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
            overlay, components = split_components(spec.get("config") or {})
            step_cfg = OmegaConf.merge(cfg, overlay)
            with open_dict(step_cfg):
                for path, block in components.items():
                    OmegaConf.update(step_cfg, path, block, merge=False)
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
        with stage_writer(step.cfg, step.stage):  # one writer per stage folder
            results[step.name] = STAGES[step.stage].run(step.cfg)
    if not helper:
        record_arm(cfg)
    return results


def wait_for_step(step: Step, poll_s: float = 2.0) -> None:
    """Block a helper rank until rank 0's run of `step` has finished (its manifest says so)."""
    while not reuse_decision(step.cfg, step.stage).reuse:
        time.sleep(poll_s)


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
