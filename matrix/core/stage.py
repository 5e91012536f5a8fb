"""What every stage shares: its run dir, its manifest and its W&B run.

A stage (simulate, generate, train, evaluate) opens a `StageRun`, writes its outputs into
`run.dir`, logs metrics through `run.log` (W&B, offline by default, plus metrics.jsonl in the
run dir so nothing depends on W&B) and closes with `run.finish(...)`, which writes
manifest.json: stage, schema version, resolved config (secrets redacted), config hash,
git sha, inputs with hashes, counts and token totals.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.io import (
    JsonlLog,
    atomic_write_text,
    disk_writes,
    read_jsonl,
    write_json,
    write_jsonl,
)
from matrix.common.secret_guard import scrubbed_argv
from matrix.common.secrets import redact
from matrix.core.environment import environment
from matrix.core.provenance import (
    ATTEMPT,
    config_hash,
    describe_input,
    git_sha,
    resolved_config,
    stale_reason,
)
from matrix.core.registry import STAGES
from matrix.core.wandb_run import flat_config, log_lineage, summary_metrics, wandb_group
from matrix.llm.ledger import endpoint_lines

if TYPE_CHECKING:
    from matrix.llm.roles import Roles

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class StageRun:
    stage: str
    dir: Path
    cfg: DictConfig
    config_hash: str
    started: float = field(default_factory=time.time)
    wandb_run: Any = None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"time": round(time.time() - self.started, 3), **metrics}
        if step is not None:
            row["step"] = step
        JsonlLog(self.dir / "metrics.jsonl").append([row])
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def keep_metrics_through(self, step: int) -> int:
        """Resume metrics.jsonl at `step`: rows logged past it (by an attempt killed after its
        last checkpoint) are dropped, in one atomic rewrite, so the resumed run logs them once;
        `step=0` drops every row (a fresh start). Row times continue from the last kept row.
        Returns the number of rows dropped."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return 0
        JsonlLog(path).drop_torn_tail()
        rows = read_jsonl(path)
        kept = [r for r in rows if step > 0 and int(r.get("step", 0)) <= step]
        if len(kept) < len(rows):
            write_jsonl(path, kept)
        if kept:
            self.started = time.time() - float(kept[-1].get("time", 0.0))
        return len(rows) - len(kept)

    def track_llm_spend(self, roles: Roles) -> None:
        """Count every attempt of this stage run against llm.budget: a resumed run starts from
        what the killed or budget-stopped attempts spent (llm_spend.json). The key leaves
        llm.budget out, so raising the budget and rerunning resumes with the spend so far."""
        data = OmegaConf.to_container(self.cfg, resolve=True)
        (data.get("llm") or {}).pop("budget", None)
        roles.carry_spend(self.dir / "llm_spend.json", config_hash(data, self.stage))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in metrics.items():
                self.wandb_run.summary[k] = v

    def finish(
        self,
        counts: dict[str, Any],
        inputs: dict[str, str | Path] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict:
        manifest = {
            "stage": self.stage,
            "schema_version": SCHEMA_VERSION,
            "config_hash": self.config_hash,
            "git_sha": git_sha(),
            "complete": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - self.started, 2),
            "host": {"python": platform.python_version(), "machine": platform.machine()},
            # the package versions and the lock the result came from
            "environment": environment(),
            "inputs": {k: describe_input(v) for k, v in (inputs or {}).items()},
            "counts": counts,
            **(extra or {}),
            "config": resolved_config(self.cfg),
        }
        written = redact(manifest)
        write_json(self.dir / "manifest.json", written)
        for line in endpoint_lines((extra or {}).get("llm") or {}):  # one per served replica
            log.info(line)
        self.summary(summary_metrics(counts, extra))
        if self.wandb_run is not None:
            log_lineage(self.wandb_run, self.dir, written)
            self.wandb_run.finish()
            self.wandb_run = None
        return manifest


def stage_folder(cfg: DictConfig, stage: str) -> str:
    """The folder of `stage` under runs/<run.name>/: the stage's name, or the name of the
    pipeline step that runs the stage again with its own settings (`run.stage_dirs`, which
    the pipeline sets, e.g. {train: train_sft})."""
    dirs = (cfg.get("run") or {}).get("stage_dirs") or {}
    return str(dirs.get(stage, stage))


def stage_dir(cfg: DictConfig, stage: str, shard: bool = True) -> Path:
    """Where a stage writes; a shard of a sharded run writes to its own shards/ subfolder."""
    from matrix.core.shard import Shard

    base = Path(cfg.paths.runs_dir) / str(cfg.run.name) / stage_folder(cfg, stage)
    return (
        Shard.from_cfg(cfg).dir(base)
        if shard and stage in STAGES and STAGES[stage].shardable
        else base
    )


def set_aside_stale(cfg: DictConfig, stage: str) -> bool:
    """Move the stage folder's outputs to `<run>/.stale/<folder>__<old config hash>__<time>`
    when a run of another config, or a finished run whose inputs changed since, wrote them
    (`matrix.core.provenance.stale_reason`): this run then starts fresh instead of resuming them.
    Every set-aside attempt is kept under its own name; nothing is deleted (`make clean-stale`
    removes them on request). Returns whether it did. Only the stage's own process may call
    it (rank zero)."""
    out = stage_dir(cfg, stage)
    why = (
        stale_reason(out, config_hash(cfg, stage), config_hash(cfg, stage, resumable=True))
        if out.is_dir()
        else None
    )
    if why is None:
        return False
    dest = stale_dest(cfg, out)
    with disk_writes(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.rename(dest)
    log.warning("%s: starting fresh; %s (the old outputs are in %s)", stage, why, dest)
    return True


def stale_dest(cfg: DictConfig, out: Path) -> Path:
    """A new, unused folder under `<run>/.stale/` for the outputs in `out`: named by the stage
    folder, the config hash of the run that wrote them and the time they were set aside."""
    run_root = Path(cfg.paths.runs_dir) / str(cfg.run.name)
    rel = out.relative_to(run_root) if out.is_relative_to(run_root) else Path(out.name)
    try:
        old_hash = str(json.loads((out / ATTEMPT).read_text(encoding="utf-8"))["config_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        old_hash = "unknown"
    base = f"{'__'.join(rel.parts)}__{old_hash}__{time.strftime('%Y%m%d-%H%M%S')}"
    dest, n = run_root / ".stale" / base, 1
    while dest.exists():  # two set-asides within one second
        n += 1
        dest = run_root / ".stale" / f"{base}-{n}"
    return dest


def open_stage(cfg: DictConfig, stage: str, resume: bool = True) -> StageRun:
    """Open the stage's run dir. `resume`: this attempt continues the folder's earlier one (the
    same W&B run id, kept in <stage dir>/wandb/run_id); False starts a new W&B run. Outputs of
    another config (or of changed inputs) are set aside first (`set_aside_stale`)."""
    out = stage_dir(cfg, stage)
    chash = config_hash(cfg, stage)
    resume = not set_aside_stale(cfg, stage) and resume
    with disk_writes(out):
        out.mkdir(parents=True, exist_ok=True)
        # A stage that starts (or resumes) is no longer complete until it finishes again.
        (out / "manifest.json").unlink(missing_ok=True)
    write_json(
        out / ATTEMPT,
        {"config_hash": chash, "resume_hash": config_hash(cfg, stage, resumable=True)},
    )
    run = StageRun(stage=stage, dir=out, cfg=cfg, config_hash=chash)
    run.wandb_run = _start_wandb(cfg, stage, out, run.config_hash, resume)
    log.info("%s: writing to %s (config hash %s)", stage, out, run.config_hash)
    return run


def wandb_run_id(out: Path, resume: bool) -> str:
    """The W&B run id of the stage folder `out`: the stored one when resuming, else a new one
    (stored under wandb/, which input hashes leave out)."""
    path = out / "wandb" / "run_id"
    if resume and path.exists():
        return path.read_text(encoding="utf-8").strip()
    # W&B's own ids: 8 characters of [a-z0-9]
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    atomic_write_text(path, run_id + "\n")
    return run_id


def _start_wandb(cfg: DictConfig, stage: str, out: Path, chash: str, resume: bool = True) -> Any:
    wcfg = cfg.get("logger", {}).get("wandb") if cfg.get("logger") else None
    if not wcfg or not wcfg.get("enabled", True):
        return None
    import wandb

    # WANDB_MODE from the environment wins, so `WANDB_MODE=online` works without a config edit;
    # offline never asks for a login.
    mode = os.environ.get("WANDB_MODE") or wcfg.get("mode", "offline")
    experiment = str(cfg.get("experiment_name") or "default")
    tags = [stage, f"experiment:{experiment}", f"config:{chash}"]
    tags += [str(t) for t in (wcfg.get("tags") or [])]
    sweep = cfg.get("run", {}).get("sweep_id")
    if sweep:
        tags.append(f"sweep:{sweep}")
    config = resolved_config(cfg)
    with scrubbed_argv():  # W&B records the command line in the run's metadata
        return wandb.init(
            project=wcfg.get("project", "matrix"),
            entity=wcfg.get("entity"),
            # a sweep's runs share its id as group (matrix.core.wandb_run)
            group=wandb_group(config),
            job_type=stage,
            name=f"{cfg.run.name}/{stage_folder(cfg, stage)}",
            tags=tags,
            dir=str(out),
            mode=mode,
            # a resumed attempt continues the same run (offline: a second offline-run-*-<id>
            # folder that `wandb sync` adds to the same run)
            id=wandb_run_id(out, resume),
            resume="allow",
            # dotted keys (`optimizer.lr`): W&B's run comparer and parallel coordinates
            config={**flat_config(config), "config_hash": chash, "run_dir": str(out)},
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
