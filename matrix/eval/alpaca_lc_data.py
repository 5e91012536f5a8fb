"""The public upstream AlpacaEval 2 data shipped under `data/alpaca_eval_2/` (data/ATTRIBUTION.md).

Reference (baseline) outputs, the full annotations of a few models (`BUNDLED_MODELS`), the slim
annotation sets of every shipped model (preference and both answer lengths per instruction), the
published per-model GLM coefficients, the leaderboard and the gamed baselines' answer lengths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matrix.eval.alpaca_lc_glm import GLMCoefficients, Pairwise
from matrix.eval.datafiles import DATA_DIR, iter_jsonl, read_csv, read_jsonl
from matrix.eval.winrate import preferences_to_unit

BASELINE = "gpt4_1106_preview"
GAMED_BASELINES = ("gpt4_1106_preview_verbose", "gpt4_1106_preview_concise")
BUNDLED_MODELS = (
    "gpt-3.5-turbo-1106",
    "vicuna-7b-v1.5",
    "alpaca-7b",
    "FuseChat-Llama-3.1-8B-Instruct",
)
SLIM_DIR = "alpaca_eval_2/annotations_slim"


def load_reference_outputs() -> list[dict]:
    return read_jsonl("alpaca_eval_2/reference_outputs_gpt4_turbo.jsonl.gz")


def load_bundled_annotations(model: str) -> list[dict]:
    """Published weighted_alpaca_eval_gpt4_turbo annotations of `model`, with output_1 re-joined."""
    rows = read_jsonl(f"alpaca_eval_2/annotations/{model}.jsonl.gz")
    for row, ref in zip(rows, load_reference_outputs(), strict=True):
        row["output_1"] = ref["output"]
    return rows


def pairwise_from_annotations(rows: Sequence[dict]) -> Pairwise:
    return Pairwise(
        preference=preferences_to_unit([r["preference"] for r in rows]),
        len_model=np.array([len(r["output_2"]) for r in rows]),
        len_baseline=np.array([len(r["output_1"]) for r in rows]),
    )


@functools.cache
def load_annotation_sets(directory: str | None = None) -> dict[str, Pairwise]:
    """The slim upstream annotation sets (preference and both lengths per instruction), by model."""
    root = Path(directory) if directory else DATA_DIR / SLIM_DIR
    out = {}
    for path in sorted(root.glob("*.jsonl.gz")):
        rows = list(iter_jsonl(path))
        if [r["index"] for r in rows] != list(range(len(rows))):
            raise ValueError(f"{path}: rows must list the instructions 0..n-1 in order")
        out[path.name.removesuffix(".jsonl.gz")] = Pairwise(
            preference=preferences_to_unit([r["preference"] for r in rows]),
            len_model=np.array([r["len_output_2"] for r in rows]),
            len_baseline=np.array([r["len_output_1"] for r in rows]),
        )
    if not out:
        raise FileNotFoundError(f"no *.jsonl.gz annotation sets in {root}")
    return out


@functools.cache
def published_glm_weights() -> dict[str, GLMCoefficients]:
    """Upstream per-model GLM coefficients (length, difficulty, model)."""
    return {
        row[""]: GLMCoefficients(
            length=float(row["np.tanh(std_delta_len)"]),
            difficulty=float(row["instruction_difficulty"]),
            model=float(row["not_gamed_baseline.astype(float)"]),
        )
        for row in read_csv("alpaca_eval_2/lc_glm_weights.csv")
    }


@functools.cache
def leaderboard() -> dict[str, dict[str, str]]:
    return {r[""]: r for r in read_csv("alpaca_eval_2/leaderboard.csv")}


def published_lc(model: str) -> float | None:
    value = leaderboard().get(model, {}).get("length_controlled_winrate", "")
    return float(value) if value else None


@functools.cache
def gamed_std_delta_len() -> dict[str, np.ndarray]:
    """std_delta_len of each gamed baseline against the baseline (from their public outputs)."""
    rows = read_csv("alpaca_eval_2/gamed_baseline_lengths.csv")
    ref = np.array([len(r["output"]) for r in load_reference_outputs()], dtype=float)
    out = {}
    for name in GAMED_BASELINES:
        pair = Pairwise(np.zeros(len(rows)), np.array([int(r[name]) for r in rows]), ref)
        out[name] = pair.std_delta_len()
    return out
