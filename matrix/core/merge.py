"""Join a sharded stage: python -m matrix.merge <simulate|generate|evaluate> run.name=... [shard.count=N]

Reads `<stage dir>/shards/*-of-N/manifest.json`, checks that shards 0..N-1 each finished
exactly once with the same config (config hashes equal once shard.index is set aside), then
writes the merged outputs and a manifest into `<stage dir>/`. Any problem is refused with a
message naming the shard folder; nothing is written until every check passes.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.io import read_json
from matrix.common.validation import ConfigError
from matrix.core.folder_lock import stage_writer
from matrix.core.provenance import config_hash
from matrix.core.registry import SHARDED_STAGES, STAGES
from matrix.core.shard import Shard
from matrix.core.stage import StageRun, stage_dir

log = logging.getLogger(__name__)


@dataclass
class Merged:
    """What a stage's merge wrote: the manifest's counts, inputs and extra fields."""

    counts: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _hash_apart_from_index(manifest: dict, stage: str) -> str:
    cfg = copy.deepcopy(manifest["config"])
    cfg.setdefault("shard", {})["index"] = 0
    return config_hash(cfg, stage)


def shard_manifests(base: Path, stage: str, count: int | None = None) -> list[tuple[Path, dict]]:
    """(folder, manifest) of every shard, in index order; raises if the set is not whole."""
    root = base / "shards"
    folders = sorted(root.glob("*-of-*")) if root.is_dir() else []
    if not folders:
        raise ConfigError(
            f"{root}: no shard folders; run the stage with shard.count=N shard.index=0..N-1"
        )
    counts = {int(f.name.split("-of-")[1]) for f in folders}
    if count is None:
        if len(counts) > 1:
            raise ConfigError(
                f"{root}: shards of several counts {sorted(counts)}; pass shard.count=N"
            )
        count = counts.pop()
    found = {int(f.name.split("-of-")[0]): f for f in folders if f.name.endswith(f"-of-{count}")}
    missing = [i for i in range(count) if i not in found]
    if missing:
        raise ConfigError(
            f"{root}: shards {missing} of {count} never ran (no {missing[0]}-of-{count}/)"
        )
    out, hashes = [], {}
    for i in range(count):
        m_path = found[i] / "manifest.json"
        if not m_path.exists():
            raise ConfigError(f"{found[i]}: no manifest.json; this shard did not finish, rerun it")
        m = read_json(m_path)
        if m.get("stage") != stage or not m.get("complete"):
            raise ConfigError(f"{m_path}: not a complete {stage} manifest")
        sh = m["config"].get("shard") or {}
        if (sh.get("index"), sh.get("count")) != (i, count):
            raise ConfigError(f"{m_path}: records shard {sh}, expected index {i} of {count}")
        hashes[_hash_apart_from_index(m, stage)] = found[i]
        out.append((found[i], m))
    if len(hashes) > 1:
        a, b = list(hashes.values())[:2]
        raise ConfigError(
            f"shards ran with different configs ({a.name} vs {b.name}); rerun them "
            "with the same overrides apart from shard.index"
        )
    return out


def merge(stage: str, cfg: DictConfig) -> dict:
    """Merge the shards of `stage` for cfg's run; returns the merged manifest."""
    if stage not in SHARDED_STAGES:
        raise ConfigError(
            f"merge: '{stage}' is not sharded; use one of {', '.join(SHARDED_STAGES)}"
        )
    merge_shards = STAGES[stage].merge_fn()
    base = stage_dir(cfg, stage, shard=False)
    count = Shard.from_cfg(cfg).count
    shards = shard_manifests(base, stage, count if count > 1 else None)
    shard_cfg = OmegaConf.create(shards[0][1]["config"])
    shard_cfg.shard = {"index": 0, "count": 1}
    (base / "manifest.json").unlink(missing_ok=True)
    merged = merge_shards(shards, base, shard_cfg)
    run = StageRun(stage=stage, dir=base, cfg=shard_cfg, config_hash=config_hash(shard_cfg, stage))
    return run.finish(
        merged.counts,
        inputs=merged.inputs,
        extra={
            **merged.extra,
            "merged_from": [
                {
                    "dir": str(d),
                    "config_hash": m["config_hash"],
                    "counts": m["counts"],
                    "llm": m.get("llm"),  # each shard's calls and tokens
                }
                for d, m in shards
            ],
        },
    )


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from matrix.core.cli import run_user_command
    from matrix.core.config_check import CONF_DIR, check_config

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-") or "=" in args[0]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    stage, overrides = args[0], args[1:]
    conf = str(CONF_DIR)
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(stage if stage in SHARDED_STAGES else "pipeline", overrides=overrides)

    def run_merge(c: DictConfig) -> dict:
        if stage not in SHARDED_STAGES:  # an unknown stage is merge()'s error to report
            return merge(stage, c)
        check_config(c, stage, models=False)  # a merge calls no model
        with stage_writer(c, stage, shard=False):  # one writer of the merged folder
            return merge(stage, c)

    m = run_user_command(run_merge, cfg)
    print(json.dumps(m["counts"]))


if __name__ == "__main__":
    main()
