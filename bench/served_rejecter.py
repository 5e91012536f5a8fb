"""DPO rejected answers from a trained model folder: served by vLLM (`rejected_backend=vllm`)
against in process on transformers (`rejected_backend=in_process`, the baseline), in one run.

Both paths are the generate stage's own: `make_roles` builds the `rejecter` role from
`generate.rejected_model` and `generate.rejected_backend`, with the rejecter's sampling from
`llm.roles.rejecter`, the call cache off; each answers the same prompts (the bare user
prompt, as the stage sends it) with the same seed. The served path's server start (its
`open()`: start, wait until it answers) is timed apart and left out of its tokens/s, since a
10K-row step pays it once; the in-process path loads its model before timing for the same
reason. Tokens are what the role's ledger counts (the backends' own token counts).

    python bench/served_rejecter.py                      # the embedded SmolLM2 as an HF folder
    python bench/served_rejecter.py --rows 64 --folder runs/x/train_sft/hf_model
    python bench/served_rejecter.py -o llm.roles.rejecter.max_new_tokens=64   # any override
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ROOT / "matrix/eval/data/alpaca_eval_2/instructions.jsonl"
PATHS = ("in_process", "vllm")


def prompts(n: int) -> list[list[dict[str, str]]]:
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()[:n]
    return [[{"role": "user", "content": json.loads(x)["instruction"]}] for x in lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_path(path: str, folder: str, chats: list, overrides: list[str]) -> dict[str, float]:
    """One path's rejecter over `chats`: seconds to get ready, seconds answering, tokens."""
    from hydra import compose, initialize_config_dir

    from matrix.gen.config import REJECTED_BACKEND
    from matrix.gen.run import make_roles

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "generate",
            overrides=[
                f"generate.rejected_model={folder}",
                f"rejected_backend={path}",
                *([f"generate.rejected_backend.port={free_port()}"] if path == "vllm" else []),
                "llm.cache.enabled=false",
                *overrides,
            ],
        )
    roles = make_roles(cfg)
    try:
        rejecter = roles.get("rejecter")
        backend = roles.built(REJECTED_BACKEND)
        t0 = time.perf_counter()
        backend.open() if path == "vllm" else backend.load()
        ready = time.perf_counter() - t0
        t0 = time.perf_counter()
        rejecter.generate(chats, seed=1)
        seconds = time.perf_counter() - t0
        usage = roles.ledger()["roles"]["rejecter"]
    finally:
        roles.close()
    return {
        "ready_s": ready,
        "seconds": seconds,
        "rows": usage["calls"],
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="rejected answers per path")
    ap.add_argument("--folder", default=None, help="HF model folder (default: embedded SmolLM2)")
    ap.add_argument("-o", "--override", action="append", default=[], help="Hydra override")
    args = ap.parse_args()
    if args.folder is None:
        from matrix.llm.embedded import smollm2_hf_dir

        args.folder = str(smollm2_hf_dir())
    chats = prompts(args.rows)
    res = {}
    for path in PATHS:
        res[path] = run_path(path, args.folder, chats, args.override)
        r = res[path]
        print(f"{path}: ready {r['ready_s']:.1f}s, {r['seconds']:.1f}s answering", flush=True)

    print(f"\n{args.rows} rejected answers from {args.folder}")
    print(f"{'path':11} {'ready s':>8} {'answer s':>9} {'prompt tok':>10} {'compl tok':>9} "
          f"{'compl tok/s':>11} {'all tok/s':>9}")  # fmt: skip
    rate = {}
    for path in PATHS:
        r = res[path]
        comp, allt = r["completion_tokens"], r["completion_tokens"] + r["prompt_tokens"]
        rate[path] = (comp / r["seconds"], allt / r["seconds"])
        print(f"{path:11} {r['ready_s']:8.1f} {r['seconds']:9.1f} {r['prompt_tokens']:10d} "
              f"{comp:9d} {rate[path][0]:11.1f} {rate[path][1]:9.1f}")  # fmt: skip
    (c_in, a_in), (c_sv, a_sv) = rate["in_process"], rate["vllm"]
    print(f"\nvllm vs in_process (>1: served is faster): completion tok/s x{c_sv / c_in:.2f}, "
          f"all tok/s x{a_sv / a_in:.2f}, answering wall time "
          f"x{res['in_process']['seconds'] / res['vllm']['seconds']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
