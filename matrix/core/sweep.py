"""Multirun sweeps (`-m`), the same for every entry point: simulate.py, generate.py, train.py,
evaluate.py and `python -m matrix.pipeline`.

Each job of a sweep writes to its own run dir, `runs/<run.name>/<arm>/`, named by the job's
overrides that change results (`arm_name`), and all jobs share one `run.sweep_id`; no arm
ever sets another aside. A finished job adds its run dir to the sweep dir's arms.txt, and
matrix.analysis.sweep_report.CompareOnMultirunEnd (a Hydra callback in conf/pipeline.yaml,
which every entry point composes) writes the comparison of all arms into the sweep dir when
the last job is done.

A sweep of one stage varies that stage over the same inputs: the inputs it reads (simulate's
scenarios for generate, generate's rows for train, train's model for evaluate) are pinned to
the run they come from before the job's run.name gets its arm. A pipeline sweep runs the
whole loop per arm, so every stage reads and writes inside its arm.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from matrix.common.secrets import is_secret_key

log = logging.getLogger("matrix.sweep")

# Written into a multirun's sweep dir, one run dir per line, by each finished job (record_arm);
# read by matrix.analysis (the arms of a sweep, its report).
ARMS_FILE = "arms.txt"

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
    "shard",
)
# The shards of one run (`-m shard.count=N shard.index=0,...`) are parts of one arm: each job
# writes <run>/<stage>/shards/<index>-of-<count>, which `python -m matrix.merge` joins.
# A folder name has at most 255 bytes; arm_name shortens a longer arm (keeping a hash).
_ARM_MAX_BYTES = 240


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].replace("/", ".")


def _sets(override: str, roots: Iterable[str]) -> bool:
    """Whether `override` sets one of `roots` or a key below it."""
    key = _override_key(override)
    return any(key == r or key.startswith(r + ".") for r in roots)


def arm_name(overrides: list[str], swept: Iterable[str] = ()) -> str:
    """A job's arm: its overrides that change results as `key=value,key=value`, the `swept`
    keys (the sweeper's params) first, the rest sorted. Too long for a folder name, it keeps
    the swept overrides only (or, with none known, its start) and ends in a hash of the whole."""
    swept = set(swept)
    keep = [
        o
        for o in overrides
        if not _sets(o, _NOT_ARM)
        and not is_secret_key(_override_key(o))  # a key never names a folder
    ]
    keep.sort(key=lambda o: (_override_key(o) not in swept, o))
    name = ",".join(o.replace("/", "_") for o in keep)
    if len(name.encode()) <= _ARM_MAX_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = ",".join(o.replace("/", "_") for o in keep if _override_key(o) in swept) or name
    return head.encode()[: _ARM_MAX_BYTES - 9].decode(errors="ignore") + f"~{digest}"


def swept_keys(hc: Any, argv: list[str] | None = None) -> set[str]:
    """The keys a sweep varies: the sweeper's params, and the command line's sweep overrides
    (`key=a,b`, `range(...)`, `choice(...)`) where the job runs in the launching process."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {str(k) for k in (hc.sweeper.get("params") or {})}
    args = [a for a in (sys.argv[1:] if argv is None else argv) if "=" in a and a[0] != "-"]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # not this process's sweep (a submitit worker): params only
        return keys
    return keys | {o.get_key_element().replace("/", ".") for o in parsed if o.is_sweep_override()}


def name_sweep_job(cfg: DictConfig, stage: str | None = None) -> None:
    """In a multirun, each job gets its own run dir named by its overrides, under one sweep id.
    `stage`: a sweep of that stage alone, whose inputs stay those of the un-swept run."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode != RunMode.MULTIRUN:
        return
    if stage is not None:
        # every `${run.name}` the stage reads (its input folders, the model it evaluates,
        # experiment_name) resolves now, to the run the inputs come from
        OmegaConf.resolve(cfg)
    task = list(hc.overrides.task)
    arm = arm_name(task, swept_keys(hc))
    if not arm and not any(_sets(o, ["shard"]) for o in task):
        arm = str(hc.job.num)  # jobs that differ in nothing that names an arm
    with open_dict(cfg):
        cfg.run.sweep_id = (
            cfg.run.sweep_id or f"{cfg.run.name}-{hc.sweep.dir.rstrip('/').split('/')[-1]}"
        )
        if arm:  # the shards of one arm share its run dir
            cfg.run.name = f"{cfg.run.name}/{arm}"


def helper_rank() -> bool:
    """Whether this process is rank 1..n-1 of a multi-process training run. Lightning starts
    those ranks by rerunning the command; they take part in the train steps only."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) != 0
    return False


def record_arm(cfg: DictConfig) -> None:
    """Add this job's run dir to the sweep dir's arms file (multirun, rank zero only)."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode != RunMode.MULTIRUN or helper_rank():
        return
    sweep = Path(hc.sweep.dir)
    sweep.mkdir(parents=True, exist_ok=True)
    run_dir = (Path(cfg.paths.runs_dir) / str(cfg.run.name)).resolve()
    arms = sweep / ARMS_FILE
    if arms.exists() and str(run_dir) in arms.read_text(encoding="utf-8").split("\n"):
        return  # a job run again (a resumed sweep) is listed once
    with open(arms, "a", encoding="utf-8") as f:
        f.write(f"{run_dir}\n")


def flags_first(argv: list[str]) -> list[str]:
    """Move -m/--multirun before the overrides: Hydra's argparse rejects overrides that follow
    it (`experiment=x -m communication=a,b`), the natural way to write a sweep."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in flags]
