"""The finished runs an experiment comparison reads: one `Arm` per run dir.

A run dir is `runs/<run.name>/` with one folder per stage. An arm holds what the stages wrote
(generate's manifest with counts and diversity stats, train's metrics.jsonl, evaluate's
scores.json), so the comparison needs the files only, never the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.common.io import read_json, read_jsonl
from matrix.core.registry import STAGES
from matrix.core.sweep import ARMS_FILE


@dataclass
class Arm:
    name: str
    dir: Path
    manifests: dict[str, dict] = field(default_factory=dict)
    train_curve: list[dict] = field(default_factory=list)
    scores: dict[str, dict] = field(default_factory=dict)

    @property
    def experiment(self) -> str | None:
        for m in self.manifests.values():
            name = (m.get("config") or {}).get("experiment_name")
            if name:
                return str(name)
        return None


def is_run_dir(path: Path) -> bool:
    return (
        any((path / s / "manifest.json").exists() for s in STAGES)
        or (path / "evaluate" / "scores.json").exists()
    )


def load_arm(path: Path, name: str) -> Arm:
    arm = Arm(name=name, dir=path)
    for stage in STAGES:
        m = path / stage / "manifest.json"
        if m.exists():
            arm.manifests[stage] = read_json(m)
    # Only optimizer-step rows carry a step and a loss; other rows are summaries.
    # (a killed or running training may have left a torn last line)
    metrics = path / "train" / "metrics.jsonl"
    rows = read_jsonl(metrics, torn_tail=True) if metrics.exists() else []
    arm.train_curve = [r for r in rows if "step" in r and "train/loss" in r]
    scores = path / "evaluate" / "scores.json"
    if scores.exists():
        arm.scores = read_json(scores).get("scores", {})
    return arm


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run dirs named directly, listed in a sweep dir's arms file, or found below a folder."""
    found: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise FileNotFoundError(
                f"{p}: not a folder; pass run dirs (runs/<name>) or a sweep dir"
            )
        if (p / ARMS_FILE).exists():
            found += [Path(x) for x in (p / ARMS_FILE).read_text().split("\n") if x.strip()]
        elif is_run_dir(p):
            found.append(p)
        else:
            # a sweep's parent (runs/<name>/ holding <override_dirname>/ arms); skip W&B dirs
            found += sorted(
                m.parent.parent
                for m in p.rglob("manifest.json")
                if m.parent.name in STAGES and "wandb" not in m.parts
            )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(
            f"no run dirs (a folder with generate/, train/ or evaluate/ outputs) under {paths}"
        )
    return unique


def arm_names(dirs: list[Path]) -> list[str]:
    """Short, distinct names: each dir relative to the dirs' common parent."""
    if len(dirs) == 1:
        return [dirs[0].name]
    parts = [d.parts for d in dirs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    names = ["/".join(p[common:]) for p in parts]
    # Overrides every arm shares (`a=1,b=2` vs `a=1,b=3`) say nothing about the difference.
    split = [n.split(",") for n in names]
    shared = set.intersection(*(set(s) for s in split))
    short = [",".join(x for x in s if x not in shared) for s in split]
    return short if all(short) and len(set(short)) == len(short) else names


def load_arms(paths: list[Path]) -> list[Arm]:
    dirs = find_run_dirs(paths)
    return [load_arm(d, n) for d, n in zip(dirs, arm_names(dirs), strict=True)]


def sim_stats(arm: Arm) -> dict[str, Any]:
    """The simulation's counts (agents, groups, rounds, events, scenarios, ...) and seconds."""
    m = arm.manifests.get("simulate")
    if not m:
        return {}
    counts = {k: v for k, v in (m.get("counts") or {}).items() if isinstance(v, int | float)}
    return {**counts, "seconds": m.get("seconds")}


def data_stats(arm: Arm) -> dict[str, Any]:
    """Counts and diversity of the arm's generated data, flattened to `kind/metric` keys."""
    m = arm.manifests.get("generate")
    if not m:
        return {}
    out: dict[str, Any] = {f"rows/{k}": v for k, v in (m.get("counts") or {}).items()}
    for kind, stats in (m.get("stats") or {}).items():
        out |= {f"{kind}/{k}": v for k, v in stats.items()}
    return out


def train_stats(arm: Arm) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if arm.train_curve:
        out["first_loss"] = arm.train_curve[0]["train/loss"]
        out["final_loss"] = arm.train_curve[-1]["train/loss"]
    counts = (arm.manifests.get("train") or {}).get("counts") or {}
    for k in ("steps", "epochs", "tokens_trained_on"):
        if counts.get(k) is not None:
            out[k] = counts[k]
    return out


def eval_stats(arm: Arm) -> dict[str, Any]:
    """`bench/metric` -> value, or (value, lo, hi) where the benchmark reports a 95% CI."""
    out: dict[str, Any] = {}
    for bench, s in arm.scores.items():
        for k, v in s.items():
            if k.endswith("_ci95") or k.endswith("_se") or not isinstance(v, int | float):
                continue
            ci = s.get(f"{k}_ci95")
            out[f"{bench}/{k}"] = (v, ci[0], ci[1]) if isinstance(ci, list) and len(ci) == 2 else v
    return out
