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

from matrix.io import JsonlLog, read_json, read_jsonl, write_json, write_jsonl
from matrix.shard import SHARDED_STAGES, Shard
from matrix.stage import StageRun, config_hash, stage_dir
from matrix.validation import ConfigError

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


def _merge_simulate(shards: list[tuple[Path, dict]], out: Path, cfg: DictConfig) -> Merged:
    count = len(shards)
    events = sorted(
        (r for d, _ in shards for r in read_jsonl(d / "events.jsonl")), key=lambda r: r["id"]
    )
    scenarios = [r for d, _ in shards for r in read_jsonl(d / "scenarios.jsonl")]
    agents = sorted(
        (
            a
            for i, (d, _) in enumerate(shards)
            for a in read_jsonl(d / "agents.jsonl")
            if a["group"] % count == i
        ),
        key=lambda a: a["index"],
    )
    write_jsonl(out / "events.jsonl", events)
    write_jsonl(out / "scenarios.jsonl", scenarios)
    write_jsonl(out / "agents.jsonl", agents)
    write_json(out / "groups.json", read_json(shards[0][0] / "groups.json"))
    return Merged(
        {
            "agents": len(agents),
            "events": len(events),
            "scenarios": len(scenarios),
            "rounds": max(m["counts"]["rounds"] for _, m in shards),
        }
    )


def _merge_generate(shards: list[tuple[Path, dict]], out: Path, cfg: DictConfig) -> Merged:
    """Every set's rows of all shards in id order (the order of an unsharded run's seeds),
    then the duplicate filter an unsharded run applies across all rows of a kind: a row
    that duplicates (exactly or near) an earlier row of another shard is dropped, recorded
    in filtered.jsonl with `cross_shard: true` and counted. Such drops leave the merged
    set short of its target by that many rows; the merge cannot generate replacements."""
    from matrix.embeddings import Encoder
    from matrix.gen.candidates import row_instruction
    from matrix.gen.filters import Deduper
    from matrix.gen.run import KINDS, SetState, build_specs, simulation_input, write_outputs

    sim, inputs = simulation_input(cfg)
    encoder = Encoder(cfg.embedding.model, cache_dir=cfg.paths.cache_dir)
    dedup = {k: Deduper(float(cfg.generate.filters.near_dup_threshold)) for k in KINDS}
    by_set: dict[str, list[dict]] = {}
    states: dict[str, SetState] = {}
    cross: list[dict] = []
    for spec in build_specs(cfg):  # the unsharded targets
        rows = [
            r
            for d, m in shards
            for r in JsonlLog(d / "sets" / f"{spec.name}.jsonl").read()[
                : m["counts"][f"set/{spec.name}"]
            ]
        ]
        rows.sort(key=lambda r: int(r["id"].rsplit("-", 1)[1]))
        vectors = encoder.encode([row_instruction(r) for r in rows]) if rows else []
        parts = [next(s for s in m["sets"] if s["name"] == spec.name) for _, m in shards]
        st = SetState(kind=parts[0]["kind"], templates=parts[0]["templates"])
        for part in parts:
            st.seeds_used += part["seeds_used"]
            st.steps += part["steps"]
            st.surplus += part["surplus"]
            for why, n in part["filtered"].items():
                st.filtered[why] = st.filtered.get(why, 0) + n
        by_set[spec.name] = []
        for r, v in zip(rows, vectors, strict=True):
            why = dedup[spec.kind].admit(row_instruction(r), v)
            if why is None:
                by_set[spec.name].append(r)
                continue
            st.filtered[why] = st.filtered.get(why, 0) + 1
            cross.append(
                {"id": r["id"], "set": spec.name, "reason": why, "cross_shard": True, "row": r}
            )
        st.rows = len(by_set[spec.name])
        states[spec.name] = st
        write_jsonl(out / "sets" / f"{spec.name}.jsonl", by_set[spec.name])
    write_jsonl(
        out / "filtered.jsonl",
        [r for d, _ in shards for r in JsonlLog(d / "filtered.jsonl").read()] + cross,
    )
    if cross:
        log.warning(
            "generate merge: dropped %d rows that duplicate another shard's rows; the merged "
            "sets are short of their targets by that many (see filtered.jsonl, cross_shard)",
            len(cross),
        )
    result = write_outputs(
        out, cfg, build_specs(cfg), by_set, states, shards[0][1]["models"], encoder, sim
    )
    return Merged(
        {**result["counts"], "cross_shard_dups": len(cross)},
        inputs,
        {"models": result["models"], "stats": result["stats"], "sets": result["sets"]},
    )


def _merge_evaluate(shards: list[tuple[Path, dict]], out: Path, cfg: DictConfig) -> Merged:
    from matrix.eval.benchmarks import BENCHMARKS
    from matrix.eval.run import capped

    scores: dict[str, dict] = {}
    for name, bcfg in cfg.eval.benchmarks.items():
        bench = BENCHMARKS[name](capped(bcfg, cfg.eval.get("limit")))
        items = bench.load()
        rows = {}
        for kind in ("answers", "judgments"):
            by_id = {
                r["id"]: r for d, _ in shards for r in JsonlLog(d / name / f"{kind}.jsonl").read()
            }
            rows[kind] = [by_id[it["id"]] for it in items if it["id"] in by_id]
            write_jsonl(out / name / f"{kind}.jsonl", rows[kind])
        if len(rows["answers"]) != len(items):
            raise ConfigError(
                f"evaluate {name}: shards answered {len(rows['answers'])} of {len(items)} items"
            )
        scores[name] = bench.score(items, rows["answers"], rows["judgments"])
    first = read_json(shards[0][0] / "scores.json")
    write_json(
        out / "scores.json", {"model": first["model"], "judge": first["judge"], "scores": scores}
    )
    return Merged({f"{b}_n": int(s.get("n", s.get("n_advbench", 0))) for b, s in scores.items()})


_MERGERS = {"simulate": _merge_simulate, "generate": _merge_generate, "evaluate": _merge_evaluate}


def merge(stage: str, cfg: DictConfig) -> dict:
    """Merge the shards of `stage` for cfg's run; returns the merged manifest."""
    if stage not in SHARDED_STAGES:
        raise ConfigError(
            f"merge: '{stage}' is not sharded; use one of {', '.join(SHARDED_STAGES)}"
        )
    base = stage_dir(cfg, stage, shard=False)
    count = Shard.from_cfg(cfg).count
    shards = shard_manifests(base, stage, count if count > 1 else None)
    shard_cfg = OmegaConf.create(shards[0][1]["config"])
    shard_cfg.shard = {"index": 0, "count": 1}
    (base / "manifest.json").unlink(missing_ok=True)
    merged = _MERGERS[stage](shards, base, shard_cfg)
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
                    "llm": m.get("llm") or m.get("ledger"),  # each shard's calls and tokens
                }
                for d, m in shards
            ],
        },
    )


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from matrix.cli import run_stage

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-") or "=" in args[0]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    stage, overrides = args[0], args[1:]
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(stage if stage in SHARDED_STAGES else "pipeline", overrides=overrides)

    def run_merge(c: DictConfig) -> dict:
        return merge(stage, c)

    run_merge.__name__ = f"run_{stage}"  # run_stage checks the config as this stage's

    m = run_stage(run_merge, cfg)
    print(json.dumps(m["counts"]))


if __name__ == "__main__":
    main()
