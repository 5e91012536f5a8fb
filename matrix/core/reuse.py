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

from matrix.common.io import file_sha256
from matrix.core.stage import config_hash, describe_input, producer_manifest, stage_dir


@dataclass(frozen=True)
class ReuseDecision:
    reuse: bool
    why: str  # one line for the log: why it is reused, or why it runs
    manifest: dict = field(default_factory=dict)


def changed_inputs(manifest: dict) -> list[str]:
    """The names of the recorded inputs that differ from what is on disk now."""
    changed = []
    for name, recorded in (manifest.get("inputs") or {}).items():
        path = Path(recorded["path"])
        if recorded.get("producer_manifest_sha256"):
            # only the producing stage's manifest is read: a model folder is not hashed again
            producer = producer_manifest(path.resolve()) if path.exists() else None
            now = file_sha256(producer) if producer is not None else None
            same = now == recorded["producer_manifest_sha256"]
        else:
            same = describe_input(path).get("sha256") == recorded.get("sha256")
        if not same:
            changed.append(f"{name} ({recorded['path']})")
    return changed


ATTEMPT = "attempt.json"  # the config hashes of the run that last wrote the folder


def stale_reason(folder: Path, chash: str, resume_hash: str) -> str | None:
    """Why the outputs in `folder` cannot be resumed by a run of config hash `chash` (and
    resumable hash `resume_hash`: the config less the keys a resumed run may change, such as a
    target), or None when they can: no earlier run, or one of the same config whose inputs,
    if it finished, are unchanged. An unfinished run's inputs are not recorded yet."""
    attempt = folder / ATTEMPT
    manifest = folder / "manifest.json"
    m = json.loads(manifest.read_text(encoding="utf-8")) if manifest.exists() else {}
    if attempt.exists():
        recorded = json.loads(attempt.read_text(encoding="utf-8"))
        if recorded.get("resume_hash") != resume_hash:
            return (
                f"its last run had config hash {recorded.get('config_hash')}, this run's is {chash}"
            )
    elif m.get("complete") and m.get("config_hash") != chash:  # a folder without attempt.json
        return f"its finished run had config hash {m.get('config_hash')}, this run's is {chash}"
    if m.get("complete"):
        changed = changed_inputs(m)
        if changed:
            return f"the inputs of its finished run changed: {', '.join(changed)}"
    return None


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
