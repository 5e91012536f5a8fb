"""Run dirs in the real on-disk format of the generate, train and evaluate stages, with
made-up numbers, so the comparison can be tested without running a pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from matrix.common.io import write_json


class BagOfWords:
    """A deterministic stand-in for the sentence encoder (hashed word counts, L2-normalised)."""

    def encode(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


TOPICS = [
    "bake sourdough bread",
    "fix a flat bicycle tyre",
    "plan a trip to Lisbon",
    "write a cover letter",
    "sort a list in Python",
    "calm down before an exam",
]


def write_fake_run(
    run_dir: Path, arm: str, quality: float, experiment: str = "comm_ablation_tiny"
) -> Path:
    cfg = {"experiment_name": experiment, "run": {"name": run_dir.name}}
    rows = [
        {
            "id": f"{arm}-{i}",
            "messages": [
                {"role": "user", "content": f"How do I {t}?"},
                {"role": "assistant", "content": f"Here is how to {t}: step one, step two."},
            ],
            "set": "general",
            "domain": "general",
            "lineage": {
                "scenario_ids": [f"s{i}"],
                "agent_ids": [f"agent-{i % 3}"],
                "agent_indices": [i % 3],
                "agent_names": [f"Agent {i % 3}"],
            },
        }
        for i, t in enumerate(TOPICS)
    ]
    gen = run_dir / "generate"
    _jsonl(gen / "sft.jsonl", rows)
    write_json(
        gen / "manifest.json",
        {
            "stage": "generate",
            "complete": True,
            "config_hash": "abc",
            "config": cfg,
            "counts": {"sft": len(rows), "dpo": 0, "filtered": 2},
            "stats": {
                "sft": {
                    "instruction_distinct_2": round(0.5 * quality, 4),
                    "instruction_embedding_spread": round(0.4 * quality, 4),
                    "scenario_coverage": 0.75,
                    "agent_coverage": 1.0,
                }
            },
        },
    )
    tr = run_dir / "train"
    _jsonl(
        tr / "metrics.jsonl",
        [
            {"time": 0.1, "step": s, "train/loss": 5.0 - quality * s / 4, "train/lr": 1e-3}
            for s in range(1, 9)
        ],
    )
    write_json(
        tr / "manifest.json",
        {
            "stage": "train",
            "complete": True,
            "config": cfg,
            "counts": {"steps": 8, "epochs": 1, "tokens_trained_on": 4096},
            "inputs": {"data": {"path": str(gen / "sft.jsonl"), "sha256": None}},
        },
    )
    ev = run_dir / "evaluate"
    wr = 20.0 * quality
    write_json(
        ev / "scores.json",
        {
            "model": "m",
            "judge": "j",
            "scores": {
                "alpaca_eval2": {
                    "win_rate": wr,
                    "win_rate_se": 3.0,
                    "win_rate_ci95": [wr - 5.9, wr + 5.9],
                    "n": 6,
                    "judge_failures": 0,
                    "avg_length": 300.0,
                }
            },
        },
    )
    _jsonl(
        ev / "alpaca_eval2" / "answers.jsonl",
        [
            {"id": i, "turns": [f"To {t}, start with the first step."]}
            for i, t in enumerate(TOPICS[:3])
        ],
    )
    write_json(
        ev / "manifest.json", {"stage": "evaluate", "complete": True, "config": cfg, "counts": {}}
    )
    return run_dir
