"""Whether a finished step can be reused, decided as build tools (Make, DVC) decide.

A step is reused only when (1) its manifest says it finished, (2) with the same config hash
(only the keys its stage depends on, matrix.core.registry), and (3) every input it recorded
is unchanged. An input that another stage wrote is compared through that stage's
manifest (cheap, and it changes whenever that stage ran again); any other input through
its content hash. So changing an upstream setting reruns every step downstream of it, and
only those: a step whose inputs and config are the same is never redone.

A rerun starts from scratch: a stage folder whose last run (finished, or killed and
recorded in `attempt.json`) had another config hash, or whose finished run read inputs that
have changed since, is set aside by `matrix.core.stage.open_stage` before the stage writes
(`stale_reason`), so no row, answer or checkpoint of the old config is resumed into the new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from matrix.core.provenance import changed_inputs, config_hash, stale_reason
from matrix.core.stage import stage_dir


@dataclass(frozen=True)
class ReuseDecision:
    reuse: bool
    why: str  # one line for the log: why it is reused, or why it runs
    manifest: dict = field(default_factory=dict)


def unfinished(folder: Path, cfg: DictConfig, stage: str, chash: str) -> str:
    """What the stage will do with an unfinished run: resume it, or (another config, which
    the stage sets aside) start fresh."""
    why = stale_reason(folder, chash, config_hash(cfg, stage, resumable=True))
    if why:
        return f"the last run did not finish and {why}; starting fresh"
    return "the last run did not finish; resuming it"


def reuse_decision(cfg: DictConfig, stage: str) -> ReuseDecision:
    folder = stage_dir(cfg, stage)
    path = folder / "manifest.json"
    chash = config_hash(cfg, stage)
    # A stage removes its manifest when it starts and writes it when it finishes.
    if not path.exists() and folder.is_dir() and any(folder.iterdir()):
        return ReuseDecision(False, unfinished(folder, cfg, stage, chash))
    if not path.exists():
        return ReuseDecision(False, "no run in this folder yet")
    m = json.loads(path.read_text(encoding="utf-8"))
    if not m.get("complete"):
        return ReuseDecision(False, unfinished(folder, cfg, stage, chash))
    if m.get("config_hash") != chash:
        return ReuseDecision(False, f"config changed (hash {m.get('config_hash')} -> {chash})")
    changed = changed_inputs(m)
    if changed:
        return ReuseDecision(False, f"inputs changed: {', '.join(changed)}")
    n = len(m.get("inputs") or {})
    return ReuseDecision(True, f"config hash {chash} and its {n} input(s) unchanged", m)
