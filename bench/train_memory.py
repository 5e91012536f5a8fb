"""Peak memory of each packed training step, per attention kernel and loss path, in one run.

    python bench/train_memory.py                          # SmolLM2-135M, 2 rows x 1024, 3 steps
    python bench/train_memory.py --rows 8 --steps 4 --configs sdpa_varlen/packed/chunked

Each configuration trains in a fresh process (so one's allocations cannot hide another's):
SmolLM2-135M in fp32, AdamW, random tokens in rows of `--length` tokens. `packed` rows hold
sequences of 50-400 tokens with restarting position ids (the block-diagonal case); `causal`
rows are one sequence each (no block mask: the control). `logits` is the full-logits loss
(`model(...).logits` -> fp32 cross-entropy), `chunked` the hidden-state loss training uses
(matrix/train/loss.py). A fourth part `/ckpt` turns on activation checkpointing
(`model.gradient_checkpointing`). Prints each step's peak RSS (Linux VmHWM, reset before every step) and
the RSS left after it.

    python bench/train_memory.py --stage --rows 4 --length 2048 --steps 2

`--stage` runs the train stage itself (`run_train`) instead, with its default settings
(SmolLM2-135M, fp32, packed, AdamW, `train.memory.plan=auto`), `--rows` as data.batch_size and
`--length` as data.max_seq_len, for `--steps` optimizer steps, on synthetic multi-turn chats
with a long tail (2-6 turns, lognormal answer lengths, the longest truncated at the maximum
length), ordered so that the first batches are the fullest (the largest micro-batch the memory
plan counts on). Prints the memory plan's line and each step's peak RSS (`train/peak_memory_gb`).
`--override key=value ...` adds config overrides (e.g. `train.memory.plan=off` for the run
without a plan).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = [
    "sdpa/causal/logits",
    "sdpa/packed/logits",
    "eager/packed/logits",
    "sdpa_varlen/packed/logits",
    "sdpa_varlen/packed/chunked",
]


def one(config: str, rows: int, length: int, steps: int, seed: int) -> list[dict]:
    import torch
    from omegaconf import OmegaConf

    from matrix.train.lm import forward_logits
    from matrix.train.memory import peak_bytes, reset_peak
    from matrix.train.models import build_model, load_tokenizer
    from matrix.train.sft import batch_loss, sft_loss

    attn, layout, loss_path, *rest = config.split("/")
    mcfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    mcfg.gradient_checkpointing = rest == ["ckpt"]
    tok = load_tokenizer(mcfg)
    model = build_model(mcfg, tok, attn, seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        ids = torch.randint(0, len(tok), (rows, length), generator=g)
        pos = torch.arange(length).repeat(rows, 1)
        if layout == "packed":
            for r in range(rows):
                t = 0
                while t < length:
                    n = min(int(torch.randint(50, 400, (1,), generator=g)), length - t)
                    pos[r, t : t + n] = torch.arange(n)
                    t += n
        batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": pos}
        reset_peak()
        t0 = time.perf_counter()
        if loss_path == "chunked":
            loss, _ = batch_loss(model, batch)
        else:
            loss, _ = sft_loss(forward_logits(model, batch), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
        seconds = time.perf_counter() - t0
        rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024
        out.append(
            {
                "config": config,
                "step": step,
                "peak_gb": peak_bytes() / 2**30,
                "after_gb": rss / 2**30,
                "seconds": seconds,
            }
        )
    return out


def multi_turn_chats(n: int, seed: int) -> list[dict]:
    """Chats of 2-6 turns whose answers have a long tail (lognormal word counts, median ~90)."""
    import random

    rng = random.Random(seed)
    from bench.train import WORDS as words  # the TRL comparison's vocabulary

    rows = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(2, 6)):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
            a = " ".join(
                rng.choice(words) for _ in range(min(int(rng.lognormvariate(4.5, 1.0)), 3000))
            )
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        rows.append({"messages": messages})
    return rows


def stage(rows: int, length: int, steps: int, seed: int, overrides: list[str]) -> dict:
    import logging
    import tempfile

    from hydra import compose, initialize_config_dir

    from matrix.common.io import read_jsonl, write_jsonl
    from matrix.train.run import run_train

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("memory plan"):
                lines.append(record.getMessage())

    logging.getLogger("matrix.train.memory_fit").addHandler(Keep())
    logging.getLogger("matrix.train.memory_fit").setLevel(logging.INFO)
    work = Path(tempfile.mkdtemp(prefix="train_memory_"))
    data = work / "chats.jsonl"
    write_jsonl(data, multi_turn_chats(rows * steps * 12, seed))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "trainer=cpu",
                "logger=none",
                f"paths.runs_dir={work}",
                "run.name=memory",
                f"data.path={data}",
                f"data.max_seq_len={length}",
                f"data.batch_size={rows}",
                "data.shuffle=false",  # packed units come longest first: the fullest batches
                f"trainer.max_steps={steps}",
                "trainer.progress_bar=false",
                "train.checkpoint.enabled=false",
                "train.export=false",
                f"seed={seed}",
                *overrides,
            ],
        )
    run_train(cfg)
    metrics = [
        r for r in read_jsonl(work / "memory" / "train" / "metrics.jsonl") if "train/loss" in r
    ]
    seen = [0] + [int(r["train/tokens_seen"]) for r in metrics]
    return {
        "plan": lines,
        "peaks_gb": [r["train/peak_memory_gb"] * 2**30 / 1e9 for r in metrics],
        "tokens": [b - a for a, b in zip(seen, seen[1:], strict=False)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT, help="attention/layout/loss[/ckpt]")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", action="store_true", help="run the train stage (see above)")
    ap.add_argument("--override", nargs="*", default=[], help="--stage: config overrides")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        res = stage(args.rows, args.length, args.steps, args.seed, args.override)
        print("\n".join(res["plan"]) or "memory plan: no line (train.memory.plan=off?)")
        for i, (peak, tokens) in enumerate(zip(res["peaks_gb"], res["tokens"], strict=True)):
            print(f"step {i}: peak RSS {peak:.2f} GB ({tokens} tokens)")
        return
    if args.child:
        print(json.dumps(one(args.child, args.rows, args.length, args.steps, args.seed)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"SmolLM2-135M fp32, {args.rows} rows x {args.length} tokens, AdamW, per step:")
    print(
        f"{'attention/layout/loss':<28} " + " ".join(f"step{i} peak GB" for i in range(args.steps))
    )
    for config in args.configs:
        cmd = [sys.executable, __file__, "--child", config]
        cmd += ["--rows", str(args.rows), "--length", str(args.length)]
        cmd += ["--steps", str(args.steps), "--seed", str(args.seed)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            print(f"{config:<28} failed (exit {res.returncode}): {res.stderr.strip()[-300:]}")
            continue
        steps = json.loads(res.stdout.strip().splitlines()[-1])
        peaks = " ".join(f"{s['peak_gb']:13.2f}" for s in steps)
        secs = sum(s["seconds"] for s in steps) / len(steps)
        print(
            f"{config:<28} {peaks}   (RSS after last step {steps[-1]['after_gb']:.2f} GB, "
            f"{secs:.0f} s/step)",
            flush=True,
        )


if __name__ == "__main__":
    main()
