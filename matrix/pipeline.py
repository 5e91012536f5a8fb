"""The whole loop in one command: simulate -> generate -> train -> evaluate.

    python -m matrix.pipeline experiment=demo
    python -m matrix.pipeline experiment=comm_ablation_tiny -m communication=none,random,structured

One composed config (conf/pipeline.yaml) feeds every stage; each stage hashes only the keys
it depends on (matrix.stage.STAGE_KEYS). A stage whose manifest says it finished with the
same hash is reused; an unfinished one resumes from its own checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from matrix.cli import run_stage
from matrix.stage import finished_manifest

log = logging.getLogger("matrix.pipeline")


def _stage_fn(stage: str) -> Callable[[DictConfig], object]:
    if stage == "simulate":
        from matrix.sim.run import run_simulate

        return run_simulate
    if stage == "generate":
        from matrix.gen.run import run_generate

        return run_generate
    if stage == "train":
        from matrix.train.run import run_train

        return run_train
    if stage == "evaluate":
        from matrix.eval.run import run_evaluate

        return run_evaluate
    raise ValueError(f"pipeline.stages: unknown stage '{stage}'; use simulate, generate, train, evaluate")


def name_sweep_job(cfg: DictConfig) -> None:
    """In a multirun, each job gets its own run dir named by its overrides, under one sweep id."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            arm = hc.job.override_dirname or str(hc.job.num)
            cfg.run.sweep_id = cfg.run.sweep_id or f"{cfg.run.name}-{hc.sweep.dir.rstrip('/').split('/')[-1]}"
            cfg.run.name = f"{cfg.run.name}/{arm}"


def run_pipeline(cfg: DictConfig) -> dict:
    name_sweep_job(cfg)
    results = {}
    for stage in cfg.pipeline.stages:
        done = finished_manifest(cfg, stage)
        if done is not None and cfg.pipeline.reuse:
            log.info("%s: reusing finished run (config hash %s)", stage, done["config_hash"])
            results[stage] = done.get("counts")
            continue
        log.info("%s: running", stage)
        results[stage] = _stage_fn(stage)(cfg)
    return results


@hydra.main(config_path="../conf", config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stage(run_pipeline, cfg)


if __name__ == "__main__":
    main()
