"""What the generate stage leaves behind: sft.jsonl / dpo.jsonl / <domain>.jsonl, the
Hugging Face dataset folder, stats and the data card."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.io import write_json, write_jsonl
from matrix.gen.candidates import row_instruction, row_responses
from matrix.gen.datacard import write_datacard
from matrix.gen.explorer import write_gen_explorer
from matrix.gen.inputs import SimulationData
from matrix.gen.settings import KINDS
from matrix.gen.state import SetState
from matrix.gen.stats import coverage, diversity
from matrix.gen.synthesis import SetSpec
from matrix.llm.embeddings import Encoder

log = logging.getLogger(__name__)


def write_outputs(
    out: Path,
    cfg: DictConfig,
    specs: list[SetSpec],
    by_set: dict[str, list[dict]],
    states: dict[str, SetState],
    models: dict[str, str],
    encoder: Encoder,
    sim: SimulationData | None,
) -> dict[str, Any]:
    """sft.jsonl / dpo.jsonl / <domain>.jsonl, hf/, stats.json and datacard.md from the
    accepted rows of each set; returns counts, stats and the per-set table for the manifest.
    (Written by a finished run and by the merge of shards.)"""
    kinds, files = _write_data_files(out, cfg, specs, by_set)
    stats = _stats(specs, by_set, kinds, encoder, sim)
    write_json(out / "stats.json", stats)
    write_gen_explorer(out, by_set, sim)
    set_rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "domain": s.domain,
            "source": s.source,
            "need": s.need_name,
            "target": s.target,
            **asdict(states[s.name]),
            "rows": len(by_set[s.name]),
        }
        for s in specs
    ]
    write_datacard(
        out / "datacard.md",
        generator=str(cfg.generator.name),
        sim_dir=str(cfg.generate.simulation_dir),
        models=models,
        sets=set_rows,
        stats=stats,
        files=files + ["sets/<set>.jsonl", "filtered.jsonl", "stats.json", "manifest.json"],
        examples={s.name: by_set[s.name][:2] for s in specs},
        filters_cfg=OmegaConf.to_container(cfg.generate.filters, resolve=True),
        retrieval_cfg=OmegaConf.to_container(cfg.generate.retrieval, resolve=True),
    )
    counts: dict[str, Any] = {"sft": len(kinds["sft"]), "dpo": len(kinds["dpo"])}
    counts |= {f"set/{s['name']}": s["rows"] for s in set_rows}
    counts["filtered"] = sum(sum(s["filtered"].values()) for s in set_rows)
    counts["seeds_used"] = sum(s["seeds_used"] for s in set_rows)
    return {"counts": counts, "stats": stats, "sets": set_rows, "models": models}


def _write_data_files(
    out: Path, cfg: DictConfig, specs: list[SetSpec], by_set: dict[str, list[dict]]
) -> tuple[dict[str, list[dict]], list[str]]:
    """The rows of every set joined per kind (sft.jsonl, dpo.jsonl) and per domain, and the
    Hugging Face folder; returns the rows per kind and the files written."""
    files: list[str] = []
    kinds: dict[str, list[dict]] = {k: [] for k in KINDS}
    domains: dict[str, list[dict]] = {}
    for spec in specs:
        kinds[spec.kind].extend(by_set[spec.name])
        dkey = spec.domain if spec.kind == "sft" else f"{spec.domain}_dpo"
        domains.setdefault(dkey, []).extend(by_set[spec.name])
    for kind, rows in kinds.items():
        if rows:
            write_jsonl(out / f"{kind}.jsonl", rows)
            files.append(f"{kind}.jsonl")
    for dkey, rows in domains.items():
        if dkey not in KINDS:  # a domain named sft/dpo would overwrite the main files
            write_jsonl(out / f"{dkey}.jsonl", rows)
            files.append(f"{dkey}.jsonl")
    if cfg.generate.export_hf:
        export_hf(out / "hf", {k: v for k, v in kinds.items() if v})
        files.append("hf/ (datasets.load_from_disk)")
    return kinds, files


def _stats(
    specs: list[SetSpec],
    by_set: dict[str, list[dict]],
    kinds: dict[str, list[dict]],
    encoder: Encoder,
    sim: SimulationData | None,
) -> dict[str, dict[str, Any]]:
    """Diversity and coverage per kind, and diversity per set when there are several."""
    stats: dict[str, dict[str, Any]] = {}
    n_scen = len(sim.scenarios) if sim else 0
    n_agents = len(sim.agents) if sim else 0
    for kind, rows in kinds.items():
        if rows:
            ins = [row_instruction(r) for r in rows]
            resp = [t for r in rows for t in row_responses(r)]
            stats[kind] = {
                **diversity(ins, resp, encoder.encode(ins)),
                **coverage(rows, n_scen, n_agents),
            }
    for spec in specs:
        rows = by_set[spec.name]
        if rows and len(specs) > 1:
            ins = [row_instruction(r) for r in rows]
            stats[f"set:{spec.name}"] = diversity(
                ins, [t for r in rows for t in row_responses(r)], encoder.encode(ins)
            )
    return stats


def export_hf(path: Path, splits: dict[str, list[dict]]) -> None:
    """A datasets folder with one split per data kind (sft, dpo); load with load_from_disk."""
    import shutil

    from datasets import Dataset, DatasetDict

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
