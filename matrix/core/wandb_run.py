"""What a stage's W&B run records besides its metrics, for W&B's own views.

- Group: every run of a sweep shares one group, the sweep id (`run.sweep_id`); outside a
  sweep, `logger.wandb.group`, else the experiment name. The job type is the stage.
- Config: flat, dotted keys (`optimizer.lr`), so W&B's run comparer and parallel-coordinates
  panels can pick any setting; the values are the resolved, secrets-redacted ones.
- Artifacts: each stage logs its output (simulate: `scenarios`, generate: `data`, train:
  `model`, evaluate: `scores`) and uses the artifact of every input another stage wrote, so
  W&B's lineage graph runs scenarios -> data -> model -> scores.

An input's artifact is found through the manifest of the stage folder that wrote it
(`producer_manifest`) and built again from that folder by the same function that built it
for the producer (`output_artifact`): same name, same files, so the same digest, which W&B
resolves to the version the producer logged. Nothing is looked up on a server, so it works
offline; `wandb sync` uploads the records in the offline run files.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from matrix.common.io import read_json
from matrix.core.provenance import producer_manifest

log = logging.getLogger(__name__)

ARTIFACT_TYPES = {
    "simulate": "scenarios",
    "generate": "data",
    "train": "model",
    "evaluate": "scores",
}
# Per stage: the output files an artifact holds (those that exist); generate's data rows are
# every top-level *.jsonl but the logs below. train's model is a folder reference instead.
_FILES = {
    "simulate": ("scenarios.jsonl", "agents.jsonl", "groups.json"),
    "generate": ("datacard.md", "stats.json"),
    "evaluate": ("scores.json", "compare.json"),
}
_NOT_DATA = {"metrics.jsonl", "filtered.jsonl"}
# A file this large is added as a reference, not copied into W&B's staging folder.
_COPY_LIMIT = 1 << 30
_NAME_MAX = 120


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and scalars stay values; an empty dict
    stays as it is under its key."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flat_config(v, key + ".")
        else:
            out[key] = v
    return out


def wandb_group(cfg: dict[str, Any]) -> str:
    """The W&B group of a run of resolved config `cfg` (a plain dict: a manifest's config)."""
    sweep = (cfg.get("run") or {}).get("sweep_id")
    if sweep:
        return str(sweep)
    wcfg = (cfg.get("logger") or {}).get("wandb") or {}
    return str(wcfg.get("group") or cfg.get("experiment_name") or "default")


def artifact_name(run_name: str, folder: str) -> str:
    """`<run.name>-<stage folder>` in the characters W&B allows, unique per stage folder: a name
    that lost characters (`a=b,c=d` arms) or length ends in a hash of the whole."""
    raw = f"{run_name}/{folder}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw.replace("/", "-")).strip("-.")
    if slug == raw.replace("/", "-") and len(slug) <= _NAME_MAX:
        return slug
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{slug[: _NAME_MAX - 9]}-{digest}"


def _output_files(stage: str, folder: Path) -> list[Path]:
    files = [folder / f for f in _FILES.get(stage, ()) if (folder / f).is_file()]
    if stage == "generate":
        files += sorted(p for p in folder.glob("*.jsonl") if p.name not in _NOT_DATA)
    return files


def output_artifact(folder: Path, manifest: dict[str, Any], policy: str = "mutable") -> Any:
    """The W&B Artifact of a finished stage folder (its manifest), or None: a stage with no
    artifact type, a shard (its merged folder holds the output), a train run that exported no
    model (train.export=false), or no output file. `policy`: "mutable" copies the small files
    into W&B's staging folder when the artifact is logged (the producer), "immutable" reads
    them in place (a consumer re-declaring an artifact its producer logged)."""
    import wandb

    stage = str(manifest.get("stage"))
    cfg = manifest.get("config") or {}
    if stage not in ARTIFACT_TYPES or int((cfg.get("shard") or {}).get("count", 1)) > 1:
        return None
    files = _output_files(stage, folder)
    # train's export (its manifest names it; read in the folder, wherever the run dir is now)
    model: Path | None = folder / "hf_model"
    if not (stage == "train" and manifest.get("hf_model") and model.is_dir()):
        model = None
    if not files and model is None:
        return None
    counts = manifest.get("counts") or {}
    artifact = wandb.Artifact(
        artifact_name(str((cfg.get("run") or {}).get("name") or "run"), folder.name),
        type=ARTIFACT_TYPES[stage],
        description=f"{stage} output: {folder}",
        metadata={
            "stage": stage,
            "folder": str(folder),
            "config_hash": manifest.get("config_hash"),
            "counts": {k: v for k, v in counts.items() if isinstance(v, int | float)},
        },
    )
    if model is not None:
        # Model weights are gigabytes: a file:// reference (W&B records each file's path,
        # size and MD5, which it computes here, and copies nothing) instead of a copy that
        # `wandb sync` would upload and the staging folder would duplicate.
        # The model card (README.md) is left out: evaluate runs add their scores to it, and
        # the artifact an evaluate run uses must be the version train logged.
        for f in sorted(p for p in model.rglob("*") if p.is_file() and p.name != "README.md"):
            artifact.add_reference(f.resolve().as_uri(), name=f"hf_model/{f.relative_to(model)}")
    for f in files:
        if f.stat().st_size > _COPY_LIMIT:
            artifact.add_reference(f.resolve().as_uri(), name=f.name)
        else:
            artifact.add_file(str(f), name=f.name, policy=policy)
    return artifact


def _input_folders(stage_folder: Path, inputs: dict[str, Any]) -> list[Path]:
    """The stage folders that wrote the inputs (each once, never the stage's own)."""
    folders: list[Path] = []
    for recorded in inputs.values():
        path = Path(recorded["path"] if isinstance(recorded, dict) else recorded)
        producer = producer_manifest(path.resolve()) if path.exists() else None
        if producer is None:
            continue
        folder = producer.parent
        if folder != stage_folder.resolve() and folder not in folders:
            folders.append(folder)
    return folders


def use(run: Any, artifact: Any) -> None:
    """Declare `artifact` an input of `run`. Online, `use_artifact` with the artifact object;
    offline, W&B refuses `use_artifact`, so the artifact is logged with the flag that
    `use_artifact` itself sets for an artifact object (use after commit): `wandb sync` then
    commits it (its digest names the producer's version) and marks the run as using it."""
    if run.offline:
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)


def summary_metrics(counts: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers a finished stage puts in its run's summary: `counts/<key>`, and generate's
    data stats (`extra["stats"]`, {kind: {metric: value}}) as `stats/<kind>/<metric>`."""
    out = {f"counts/{k}": v for k, v in counts.items() if isinstance(v, int | float)}
    stats = (extra or {}).get("stats")
    if isinstance(stats, dict):
        flat = flat_config({str(k): v for k, v in stats.items()})
        out |= {
            f"stats/{k.replace('.', '/')}": v
            for k, v in flat.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    return out


def log_lineage(run: Any, stage_folder: Path, manifest: dict[str, Any]) -> None:
    """Use the artifacts of the stage's inputs and log the artifact of its output. A failure
    is logged, not raised: the manifest is the record, W&B's lineage a view of it."""
    try:
        _log_lineage(run, stage_folder, manifest)
    except Exception:
        log.exception("%s: W&B artifacts not logged", manifest.get("stage"))


def _log_lineage(run: Any, stage_folder: Path, manifest: dict[str, Any]) -> None:
    for folder in _input_folders(stage_folder, manifest.get("inputs") or {}):
        artifact = output_artifact(folder, read_json(folder / "manifest.json"), "immutable")
        if artifact is not None:
            use(run, artifact)
    artifact = output_artifact(stage_folder, manifest)
    if artifact is not None:
        run.log_artifact(artifact)
    elif manifest.get("stage") == "train":
        log.info("train: no hf_model folder (train.export=false): no model artifact")
