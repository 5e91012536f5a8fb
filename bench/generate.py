"""Throughput of the generate stage on the embedded model.

    python bench/generate.py [--simulation-dir runs/tiny/simulate] [--rows 16] [--generator sft_general]

Prints rows/s and tokens/s of the whole stage, the LLM's own tokens/s inside it (the
baseline, measured in the same run), and the share of wall time spent outside LLM calls
(retrieval, embeddings, filters, writes; target < 5%). Models are loaded before timing,
since a long run pays that once.

`--scale-rows 20000` adds what a run of that many rows costs outside the LLM that a small run
cannot show: the near-duplicate check of each new row against every accepted one, timed on
that many 384-d unit vectors (the embedding model's size, one in eight a near copy of an
earlier row) with the growing index the stage uses and, as the baseline in the same run, the
previous index that re-stacked every stored vector per row (at --baseline-rows, since it is
quadratic). The share outside LLM calls at that size is then projected from the measured run:
(its non-LLM seconds per row + the index's mean seconds per row at that size) over that plus
the LLM's seconds per row. `--scale-only` skips the stage run and prints the index timings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THRESHOLD = 0.92  # generate.filters.near_dup_threshold

from matrix.gen.filters import Deduper  # noqa: E402
from matrix.gen.run import run_generate  # noqa: E402
from matrix.llm.embeddings import Encoder  # noqa: E402
from matrix.llm.roles import Roles  # noqa: E402


def restacking_reason(vectors: list, vector: np.ndarray, threshold: float) -> bool:
    """The previous near-duplicate check: stack every stored vector, then one product."""
    return bool(vectors) and float((np.stack(vectors) @ vector).max()) >= threshold


def dedup_seconds(n: int, dim: int, growing: bool, seed: int = 0) -> float:
    """Seconds to admit n rows (one in eight a near copy of an earlier one) into the index."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    for i in range(8, n, 8):
        rows[i] = rows[rng.integers(0, i)] + 0.1 * rows[i] / np.sqrt(dim)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    t0 = time.perf_counter()
    if growing:
        dedup = Deduper(THRESHOLD)
        for i, v in enumerate(rows):
            dedup.admit(f"row {i}", v)
    else:
        kept: list = []
        for v in rows:
            if not restacking_reason(kept, v, THRESHOLD):
                kept.append(v)
    return time.perf_counter() - t0


def scale(args) -> float:
    """Prints the index timings; returns the growing index's mean seconds per row at
    --scale-rows."""
    dim = 384
    base_n = min(args.baseline_rows, args.scale_rows)
    old = dedup_seconds(base_n, dim, growing=False)
    new_small = dedup_seconds(base_n, dim, growing=True)
    new = dedup_seconds(args.scale_rows, dim, growing=True)
    print(
        f"near-duplicate index, {dim}-d: {base_n} rows re-stacking {old:.2f}s vs growing "
        f"{new_small:.2f}s ({old / new_small:.1f}x); growing at {args.scale_rows} rows "
        f"{new:.2f}s = {1e3 * new / args.scale_rows:.3f} ms/row mean"
    )
    return new / args.scale_rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--simulation-dir", default=str(ROOT / "runs" / "tiny" / "simulate"))
    ap.add_argument("--rows", type=int, default=16, help="rows per set (generate.limit)")
    ap.add_argument("--generator", default="sft_general")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--scale-rows", type=int, default=0, help="project the share to N rows")
    ap.add_argument("--baseline-rows", type=int, default=4000)
    ap.add_argument("--scale-only", action="store_true")
    args = ap.parse_args()
    if args.scale_only:
        args.scale_rows = args.scale_rows or 20000
        scale(args)
        return
    if not (Path(args.simulation_dir) / "scenarios.jsonl").exists():
        sys.exit(
            f"no scenarios.jsonl in {args.simulation_dir}; run `python simulate.py debug=tiny` "
            "or pass --simulation-dir"
        )
    os.environ.setdefault("MATRIX_NO_PROGRESS", "1")
    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(str(ROOT / "conf"), version_base="1.3"),
    ):
        cfg = compose(
            "generate",
            overrides=[
                f"generator={args.generator}",
                f"generate.simulation_dir={args.simulation_dir}",
                "logger=none",
                f"paths.runs_dir={tmp}",
                f"generate.limit={args.rows}",
                f"generate.batch_size={args.batch_size}",
                "generate.filters.drop_truncated=false",
                *(
                    f"llm.roles.{r}.max_new_tokens={args.max_new_tokens}"
                    for r in ("generator", "responder", "rejecter")
                ),
            ],
        )
        # Load the LLM and the encoder before the clock starts.
        warm = Roles(cfg.llm)
        backend = warm.backend("smollm2")
        backend.load()
        Encoder(cfg.embedding.model, cache_dir=cfg.paths.cache_dir).encode(["warm up"])
        t0 = time.perf_counter()
        result = run_generate(cfg, backends={"smollm2": backend})
        wall = time.perf_counter() - t0
    ledger = result["llm"]["total"]
    rows = result["counts"]["sft"] + result["counts"]["dpo"]
    llm_s = ledger["seconds"]
    tokens = ledger["prompt_tokens"] + ledger["completion_tokens"]
    print(f"device: {backend.device}; model: {backend.name}; generator={args.generator}")
    print(
        f"rows: {rows} in {wall:.1f}s wall -> {rows / wall:.3f} rows/s "
        f"({result['counts']['seeds_used']} seeds tried, {result['counts']['filtered']} filtered)"
    )
    print(
        f"tokens: {tokens} ({ledger['completion_tokens']} generated) -> stage {tokens / wall:.1f} tok/s, "
        f"{ledger['completion_tokens'] / wall:.1f} generated tok/s"
    )
    print(
        f"baseline (LLM calls alone): {ledger['completion_tokens'] / llm_s:.1f} generated tok/s over "
        f"{ledger['batches']} batched calls; stage/baseline = {llm_s / wall:.3f}"
    )
    share = 1 - llm_s / wall
    print(f"time outside LLM calls: {share:.1%} ({wall - llm_s:.2f}s of {wall:.1f}s; target < 5%)")
    if args.scale_rows:
        per_row = scale(args)
        other, llm = (wall - llm_s) / rows, llm_s / rows
        projected = (other + per_row) / (other + per_row + llm)
        print(
            f"projected at {args.scale_rows} rows: time outside LLM calls {projected:.1%} "
            f"({other:.3f}s/row measured + {per_row * 1e3:.2f} ms/row near-dup index, "
            f"LLM {llm:.2f}s/row; target < 5%)"
        )


if __name__ == "__main__":
    main()
