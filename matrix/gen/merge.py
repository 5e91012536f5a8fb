"""Joining the shards of a sharded generation (`python -m matrix.merge generate ...`)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from matrix.common.io import JsonlLog, write_jsonl
from matrix.core.merge import Merged
from matrix.gen.state import SetState

log = logging.getLogger(__name__)


def merge_shards(shards: list[tuple[Path, dict]], out: Path, cfg: DictConfig) -> Merged:
    """Every set's rows of all shards in id order (the order of an unsharded run's seeds),
    then the duplicate filter an unsharded run applies across all rows of a kind: a row
    that duplicates (exactly or near) an earlier row of another shard is dropped, recorded
    in filtered.jsonl with `cross_shard: true` and counted. Such drops leave the merged
    set short of its target by that many rows; the merge cannot generate replacements."""
    from matrix.gen.candidates import row_instruction
    from matrix.gen.config import build_specs
    from matrix.gen.filters import Deduper
    from matrix.gen.outputs import write_outputs
    from matrix.gen.run import simulation_input
    from matrix.gen.settings import KINDS
    from matrix.llm.embeddings import Encoder

    sim, inputs = simulation_input(cfg)
    encoder = Encoder(cfg.embedding.model, cache_dir=cfg.paths.cache_dir)
    dedup = {k: Deduper(float(cfg.generate.filters.near_dup_threshold)) for k in KINDS}
    by_set: dict[str, list[dict]] = {}
    states: dict[str, SetState] = {}
    cross: list[dict] = []
    for spec in build_specs(cfg):  # the unsharded targets
        rows = _rows_in_id_order(shards, spec.name)
        vectors = encoder.encode([row_instruction(r) for r in rows]) if rows else []
        st = _summed_state(shards, spec.name)
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


def _rows_in_id_order(shards: list[tuple[Path, dict]], name: str) -> list[dict]:
    """The committed rows of set `name` of every shard (each shard's file cut at the count
    its manifest records), in id order."""
    rows = [
        r
        for d, m in shards
        for r in JsonlLog(d / "sets" / f"{name}.jsonl").read()[: m["counts"][f"set/{name}"]]
    ]
    rows.sort(key=lambda r: int(r["id"].rsplit("-", 1)[1]))
    return rows


def _summed_state(shards: list[tuple[Path, dict]], name: str) -> SetState:
    """Set `name`'s seeds, steps, surplus and filter counts, summed over the shards."""
    parts = [next(s for s in m["sets"] if s["name"] == name) for _, m in shards]
    st = SetState(kind=parts[0]["kind"], templates=parts[0]["templates"])
    for part in parts:
        st.seeds_used += part["seeds_used"]
        st.steps += part["steps"]
        st.surplus += part["surplus"]
        for why, n in part["filtered"].items():
            st.filtered[why] = st.filtered.get(why, 0) + n
    return st
