"""Padded vs packed batches on the same data, in one run: tokens/s and padding efficiency.

    python bench/train.py                                    # tiny_debug on CPU, synthetic chats
    python bench/train.py --model smollm2_135m --device cuda --data runs/demo/generate/sft.jsonl

Both modes see the same sequences for one epoch each (forward + backward + AdamW step, the
SFT loss of the train stage); tokens/s counts real (non-padding) tokens only, so the ratio is
the end-to-end gain from packing. Prints MFU on a GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402

from matrix.common.io import read_jsonl  # noqa: E402
from matrix.train.attention import select_attention  # noqa: E402
from matrix.train.datamodule import ChatDataModule  # noqa: E402
from matrix.train.lm import forward_logits  # noqa: E402
from matrix.train.models import build_model, load_tokenizer  # noqa: E402
from matrix.train.sft import sft_loss  # noqa: E402
from matrix.train.throughput import mfu, peak_flops, training_flops_per_token  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "on",
    "was",
    "by",
    "this",
    "be",
    "are",
    "from",
    "at",
    "or",
    "an",
]


def synthetic_chats(n: int, seed: int) -> list[dict]:
    """Chats with a long-tailed answer length, like instruction data (most answers short, a
    few near the context limit)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        a_len = min(int(rng.lognormvariate(4.5, 0.9)), 1500)
        a = " ".join(rng.choice(WORDS) for _ in range(max(a_len, 3)))
        rows.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
    return rows


def train_step(model, opt, batch: dict, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss, _ = sft_loss(forward_logits(model, batch), batch["labels"])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_epoch(model, dm, device) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    loader = dm.train_dataloader()
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]
    # one untimed step first: it pays for allocations and kernel selection
    train_step(model, opt, batches[0], device)
    real = padded = seqs = 0
    seconds = 0.0
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, opt, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        real += batch["real_tokens"]
        padded += batch["padded_tokens"]
        seqs += batch["n_sequences"]
    return {
        "tokens_per_s": real / seconds,
        "padding_efficiency": real / padded,
        "real_tokens": real,
        "batches": len(loader),
        "seconds": seconds,
        "mean_seq_len": real / max(seqs, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny_debug", help="a conf/model option")
    ap.add_argument("--data", default=None, help="SFT JSONL; default: synthetic chats")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8, help="rows per batch (both modes)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    device = torch.device(args.device)
    tok = load_tokenizer(cfg.model)
    rows = (
        read_jsonl(args.data)[: args.rows] if args.data else synthetic_chats(args.rows, args.seed)
    )
    tmp = Path("/tmp") / f"matrix_bench_{args.seed}.jsonl"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    results = {}
    for mode in ("padded", "packed"):
        packed = mode == "packed"
        attn = select_attention(args.attn, packed, device.type == "cuda")
        torch.manual_seed(args.seed)
        model = build_model(cfg.model, tok, attn, args.seed).to(device).train()
        dm = ChatDataModule(
            tmp, tok, "sft", args.max_seq_len, args.batch_size, packed, seed=args.seed
        )
        dm.setup()
        r = run_epoch(model, dm, device)
        peak = peak_flops(device, "bf16-mixed")
        r["mfu"] = mfu(r["tokens_per_s"], training_flops_per_token(model, r["mean_seq_len"]), peak)
        r["attention"] = attn
        results[mode] = r
        del model
        print(
            f"{mode:>6}: {r['tokens_per_s']:10.1f} tokens/s  padding efficiency "
            f"{r['padding_efficiency']:.3f}  batches {r['batches']}  attention {attn}"
            + (f"  MFU {r['mfu']:.3f}" if r["mfu"] is not None else "")
        )
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    print(
        f"packed / padded tokens/s: {ratio:.2f}x  (model={args.model}, device={device}, "
        f"rows={len(rows)}, max_seq_len={args.max_seq_len}, batch_size={args.batch_size})"
    )
    print(json.dumps({"ratio": ratio, **results}, default=float))


if __name__ == "__main__":
    main()
