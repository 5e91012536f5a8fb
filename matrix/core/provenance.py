"""Where a run's outputs came from, and whether they still match it.

The config hash (only the keys a stage depends on, matrix.core.registry), the git sha, each
input with its content hash (and, for an input another stage wrote, the hash of that stage's
manifest), and `stale_reason`: whether a folder's outputs were written by a run that this one
may resume. matrix.core.stage records these in manifests; matrix.core.reuse decides from them
whether a finished step is reused; matrix.core.wandb_run follows them into artifact lineage.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.io import file_sha256
from matrix.common.secrets import redact
from matrix.core.registry import STAGES

# Config keys that never change what a stage computes: left out of the config hash.
_HASH_EXCLUDED_KEYS = ("paths", "logger", "run", "hydra", "debug_name")


def resolved_config(cfg: DictConfig) -> dict:
    return redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def config_hash(
    cfg: DictConfig | dict,
    stage: str | None = None,
    exclude: tuple[str, ...] = _HASH_EXCLUDED_KEYS,
    resumable: bool = False,
) -> str:
    """Hash of the config keys `stage`'s outputs depend on. `resumable`: also leave out the
    keys a resumed run may change (the stage's `resume_exclude`): two configs with the same
    resumable hash can continue each other's runs."""
    data = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in data.items() if k not in exclude}
    if stage in STAGES:
        spec = STAGES[stage]
        data = copy.deepcopy({k: v for k, v in data.items() if k in spec.hash_keys})
        for dotted in (*spec.hash_exclude, *(spec.resume_exclude if resumable else ())):
            _drop(data, dotted.split("."))
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def producer_manifest(path: Path) -> Path | None:
    """The manifest of the stage folder that wrote `path`: a stage manifest.json in its
    folder or up to two folders above it (`<stage>/hf_model/model.safetensors`), if any."""
    folders = ([path] if path.is_dir() else []) + list(path.parents)[:3]
    for folder in folders:
        m = folder / "manifest.json"
        if m.is_file() and m != path:
            try:
                if "stage" in json.loads(m.read_text(encoding="utf-8")):
                    return m
            except (ValueError, OSError):
                continue
    return None


def describe_input(path: str | Path) -> dict:
    """Path + content hash of a stage input (a file, or every file of a folder); for an
    input another stage wrote, also the hash of that stage's manifest (matrix.core.reuse)."""
    p = Path(path)
    out: dict[str, Any] = {"path": str(p), "sha256": None}
    if p.is_file():
        out["sha256"] = file_sha256(p)
    elif p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file() and "wandb" not in x.parts):
            h.update(str(f.relative_to(p)).encode())
            h.update(file_sha256(f).encode())
        out["sha256"] = h.hexdigest()
    producer = producer_manifest(p.resolve()) if p.exists() else None
    if producer is not None:
        out["producer_manifest_sha256"] = file_sha256(producer)
    return out


def _drop(node: Any, path: list[str]) -> None:
    """Remove the dotted key `path` from nested dicts in place; `*` matches every child."""
    if not isinstance(node, dict) or not path:
        return
    head, rest = path[0], path[1:]
    for key in list(node) if head == "*" else [head]:
        if not rest:
            node.pop(key, None)
        else:
            _drop(node.get(key), rest)


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
