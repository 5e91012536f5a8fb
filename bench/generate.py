"""Throughput of the generate stage on the embedded model.

    python bench/generate.py [--simulation-dir runs/tiny/simulate] [--rows 16] [--generator sft_general]

Prints rows/s and tokens/s of the whole stage, the LLM's own tokens/s inside it (the
baseline, measured in the same run), and the share of wall time spent outside LLM calls
(retrieval, embeddings, filters, writes; target < 5%). Models are loaded before timing,
since a long run pays that once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matrix.common.embeddings import Encoder  # noqa: E402
from matrix.gen.run import run_generate  # noqa: E402
from matrix.llm.roles import Roles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--simulation-dir", default=str(ROOT / "runs" / "tiny" / "simulate"))
    ap.add_argument("--rows", type=int, default=16, help="rows per set (generate.limit)")
    ap.add_argument("--generator", default="sft_general")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
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
                f"simulation_dir={args.simulation_dir}",
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
    ledger = result["ledger"]["total"]
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


if __name__ == "__main__":
    main()
