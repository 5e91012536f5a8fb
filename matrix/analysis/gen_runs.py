"""A finished generate run as the data analyses read it: its rows (id, set, instruction,
response) and the simulate run its rows came from.

A generate folder is one with a `manifest.json` whose stage is `generate`, or, before its
manifest is written, one holding `sft.jsonl` or `dpo.jsonl`; a run folder holding such a
`generate/` folder is taken as that folder. The simulate run is found by the lineage the
generate stage records: its manifest's `inputs.agents.path` (the agents file it read), else
its config's `generate.simulation_dir`, each tried as written (relative to the directory the
stage ran in) and relative to the run folder above the generate folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.common.io import read_json, read_jsonl
from matrix.common.validation import ConfigError
from matrix.gen.candidates import row_instruction, row_responses

ROW_FILES = ("sft.jsonl", "dpo.jsonl")


@dataclass(frozen=True)
class Row:
    id: str
    set: str
    instruction: str
    response: str
    agent_ids: tuple[str, ...] = ()


@dataclass
class GenRun:
    label: str
    dir: Path
    manifest: dict[str, Any]
    rows: list[Row]
    sim_dir: Path | None
    sim_note: str = ""  # why sim_dir is None
    extra: dict[str, Any] = field(default_factory=dict)


def generate_folder(path: Path) -> Path:
    """`path` itself when it is a generate folder, its `generate/` child when that is one;
    otherwise a ConfigError naming the path and what it lacks."""
    for d in (path, path / "generate"):
        if _is_generate(d):
            return d
    if not path.exists():
        raise ConfigError(f"{path}: no such folder; pass a generate run (runs/<name>/generate)")
    raise ConfigError(
        f"{path}: not a generate run (no manifest.json of stage 'generate', no "
        f"{' or '.join(ROW_FILES)}, here or in {path / 'generate'}); pass the folder that "
        "`python generate.py` wrote, e.g. runs/<name>/generate"
    )


def _is_generate(d: Path) -> bool:
    m = d / "manifest.json"
    if m.is_file():
        try:
            return read_json(m).get("stage") == "generate"
        except (OSError, ValueError, AttributeError):
            return False
    return any((d / f).is_file() for f in ROW_FILES)


def _row(r: dict[str, Any], n: int) -> Row:
    responses = row_responses(r) if ("messages" in r or "chosen" in r) else []
    lineage = r.get("lineage") or {}
    return Row(
        id=str(r.get("id") or f"row-{n:06d}"),
        set=str(r.get("set") or r.get("domain") or ""),
        instruction=row_instruction(r),
        response=responses[0] if responses else "",
        agent_ids=tuple(str(a) for a in lineage.get("agent_ids") or ()),
    )


def read_rows(gen_dir: Path) -> list[Row]:
    """Every row of sft.jsonl then dpo.jsonl; a row id seen twice keeps its first row."""
    rows: list[Row] = []
    seen: set[str] = set()
    for name in ROW_FILES:
        f = gen_dir / name
        if not f.is_file():
            continue
        for r in read_jsonl(f, torn_tail=True):
            row = _row(r, len(rows))
            if row.id not in seen and row.instruction:
                seen.add(row.id)
                rows.append(row)
    return rows


def _candidates(gen_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    written: list[str] = []
    agents = ((manifest.get("inputs") or {}).get("agents") or {}).get("path")
    if agents:
        written.append(str(Path(agents).parent))
    sim = ((manifest.get("config") or {}).get("generate") or {}).get("simulation_dir")
    if sim:
        written.append(str(sim))
    out: list[Path] = []
    for w in written:
        p = Path(w)
        out += [p] if p.is_absolute() else [p, gen_dir.parent.parent / p, gen_dir.parent / p.name]
    return out


def find_simulation(gen_dir: Path, manifest: dict[str, Any]) -> tuple[Path | None, str]:
    """The simulate folder this run's rows came from, or None and why."""
    tried = _candidates(gen_dir, manifest)
    for d in tried:
        if (d / "agents.jsonl").is_file():
            return d, ""
    if not tried:
        return None, "its manifest names no simulate run (inputs.agents, generate.simulation_dir)"
    return None, "no agents.jsonl in " + ", ".join(sorted({str(d) for d in tried}))


def load_gen_run(path: Path, label: str | None = None) -> GenRun:
    gen_dir = generate_folder(Path(path))
    mf = gen_dir / "manifest.json"
    manifest = read_json(mf) if mf.is_file() else {}
    rows = read_rows(gen_dir)
    if not rows:
        raise ConfigError(f"{gen_dir}: a generate run without rows ({', '.join(ROW_FILES)})")
    sim_dir, note = find_simulation(gen_dir, manifest)
    run_name = ((manifest.get("config") or {}).get("run") or {}).get("name")
    return GenRun(label or run_name or gen_dir.parent.name, gen_dir, manifest, rows, sim_dir, note)


def load_gen_runs(paths: list[Path]) -> list[GenRun]:
    """The runs, labelled by run name; equal names get the folder path instead."""
    runs = [load_gen_run(p) for p in paths]
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:
            r.label = f"{r.dir.parent.name}/{r.dir.name}"
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{r.label}#{i + 1}"
    return runs
