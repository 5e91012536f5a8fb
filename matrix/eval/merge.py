"""Joining the shards of a sharded evaluation (`python -m matrix.merge evaluate ...`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from matrix.common.io import JsonlLog, read_json, write_json, write_jsonl
from matrix.common.validation import ConfigError
from matrix.core.merge import Merged


def merge_shards(shards: list[tuple[Path, dict]], out: Path, cfg: DictConfig) -> Merged:
    from matrix.eval.benchmarks import benchmark
    from matrix.eval.run import capped, record_on_card

    scores: dict[str, dict] = {}
    for name, bcfg in cfg.eval.benchmarks.items():
        bench = benchmark(name, capped(bcfg, cfg.eval.get("limit")))
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
    record_on_card(cfg, scores, first["judge"], out)
    return Merged({f"{b}_n": int(s.get("n", s.get("n_advbench", 0))) for b, s in scores.items()})
