"""Joining the shards of a sharded simulation (`python -m matrix.merge simulate ...`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from matrix.common.io import read_json, read_jsonl, write_json, write_jsonl
from matrix.core.merge import Merged


def merge_shards(shards: list[tuple[Path, dict]], out: Path, cfg: DictConfig) -> Merged:
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
