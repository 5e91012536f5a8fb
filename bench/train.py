"""Padded vs packed batches on the same data, in one run: tokens/s and padding efficiency.

    python bench/train.py                                    # tiny_debug on CPU, synthetic chats
    python bench/train.py --model smollm2_135m --device cuda --data runs/demo/generate/sft.jsonl
    python bench/train.py --peer trl                         # matrix vs TRL's SFTTrainer

Both modes see the same sequences for one epoch each (forward + backward + AdamW step, the
SFT loss of the train stage); tokens/s counts real (non-padding) tokens only, so the ratio is
the end-to-end gain from packing. Prints MFU on a GPU.

`--peer trl` (CPU; needs the `bench` extra) trains the same chats for one epoch four ways,
each in a fresh process: TRL's SFTTrainer padded and packed (best-fit decreasing, padding-free),
and matrix's train stage (`run_train`, Lightning) padded and packed. Same model (SmolLM2-135M
in fp32 unless --model says otherwise; fp32 compute, or `--precision bf16`: bf16 autocast on
both sides), AdamW at lr 2e-5, rows per batch, maximum length, loss on the answer tokens only
(TRL: prompt-completion rows, so `completion_only_loss`), gradient checkpointing
as TRL's SFTConfig defaults it (on; `--gradient-checkpointing off`). Real
tokens/s = non-padding tokens trained on / seconds of the training loop (TRL: its
on_train_begin to on_train_end; matrix: the sum of its logged step times); real tokens per
CPU-second divides by the process's CPU time over the same span instead (matrix: Lightning's
on_train_start to the last batch's end), which a loaded machine inflates far less. Neither
trainer saves a checkpoint. Peak
memory = the process's peak RSS while training. Prints the four rows and matrix's best mode over TRL's best mode. `--repeats N`
runs the four modes N times interleaved (A B C D A B C D ...), each in a fresh process, and
compares per-mode medians (with each mode's range and the per-round ratio's range), so a
change in a shared machine's load weighs on every mode alike.
"""

from __future__ import annotations

import argparse
import json
import os
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
from matrix.train.models import build_model, load_tokenizer  # noqa: E402
from matrix.train.sft import batch_loss  # noqa: E402
from matrix.train.throughput import (  # noqa: E402
    attention_context,
    mfu,
    peak_flops,
    training_flops_per_token,
)

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
        loss, _ = batch_loss(model, batch)
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
    context = 0.0
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
        context += attention_context(batch["seq_ids"]) * batch["real_tokens"]
    return {
        "tokens_per_s": real / seconds,
        "padding_efficiency": real / padded,
        "real_tokens": real,
        "batches": len(loader),
        "seconds": seconds,
        "mean_seq_len": real / max(seqs, 1),
        "attention_context": context / max(real, 1),
    }


def peer_rows(n: int, seed: int, max_words: int) -> list[dict]:
    """Single-turn chats (so prompt-completion rows for TRL mean the same labels), answers
    capped at `max_words` words so no row is truncated by either trainer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        a_len = min(max(int(rng.lognormvariate(4.5, 0.9)), 3), max_words)
        a = " ".join(rng.choice(WORDS) for _ in range(a_len))
        rows.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
    return rows


def _train_clock():
    from transformers import TrainerCallback

    class TrainClock(TrainerCallback):
        """Seconds from the training loop's start to its end: the span matrix's step times
        cover too (its StepLogger clock starts at Lightning's on_train_start)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.t0
            self.cpu_seconds = time.process_time() - self.c0

    return TrainClock


def run_trl(args, packed: bool, data: Path, work: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from matrix.train.memory import peak_bytes, reset_peak

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    tok = load_tokenizer(cfg.model)
    rows = read_jsonl(data)
    ds = Dataset.from_list(
        [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
    )
    # the model the train stage would start from (same weights, fp32), with TRL's attention
    model = build_model(cfg.model, tok, "sdpa", args.seed)
    sft = SFTConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=2e-5,
        lr_scheduler_type="constant",
        max_length=args.max_seq_len,
        packing=packed,
        packing_strategy="bfd",
        completion_only_loss=True,
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        use_cpu=True,
        # SFTConfig defaults bf16=True, which on CPU runs the step under bf16 autocast: set
        # it from --precision, as matrix's trainer.precision (32-true or bf16-mixed)
        bf16=args.precision == "bf16",
        dataloader_num_workers=0,
        seed=args.seed,
        optim="adamw_torch",
        max_grad_norm=1.0,
        disable_tqdm=True,
        gradient_checkpointing=args.gradient_checkpointing == "on",
    )
    trainer = SFTTrainer(model=model, args=sft, train_dataset=ds, processing_class=tok)
    counts = {"real": 0, "total": 0}
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        ids = batch["input_ids"]
        counts["total"] += ids.numel()
        mask = batch.get("attention_mask")
        counts["real"] += int(mask.sum()) if mask is not None else ids.numel()
        return batch

    trainer.data_collator = counting
    clock = _train_clock()()
    trainer.add_callback(clock)
    reset_peak()
    trainer.train()
    return {
        "real_tokens": counts["real"],
        "padded_tokens": counts["total"],
        "seconds": clock.seconds,
        "cpu_seconds": clock.cpu_seconds,
        "peak_bytes": peak_bytes(),
        "steps": trainer.state.global_step,
    }


def _fit_cpu_clock():
    import lightning as L

    class FitCPUClock(L.Callback):
        """CPU seconds of the process from the training loop's start to its last batch's end
        (the span of the step times), which a shared machine's load inflates far less than
        wall time."""

        def on_train_start(self, trainer, pl_module):
            self.c0 = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.cpu_seconds = time.process_time() - self.c0

    return FitCPUClock()


def run_matrix(args, packed: bool, data: Path, work: Path) -> dict:
    from matrix.train.run import run_train

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={args.model}",
                "trainer=cpu",
                "logger=none",
                f"paths.runs_dir={work}",
                "run.name=matrix",
                f"data.path={data}",
                f"data.max_seq_len={args.max_seq_len}",
                f"data.batch_size={args.batch_size}",
                f"data.packing={str(packed).lower()}",
                f"seed={args.seed}",
                "optimizer.lr=2e-5",
                "trainer.max_epochs=1",
                "trainer.log_every_n_steps=1",
                "trainer.progress_bar=false",
                # no checkpoint, as TRL saves none (save_strategy="no")
                "train.checkpoint.enabled=false",
                f"model.gradient_checkpointing={str(args.gradient_checkpointing == 'on').lower()}",
                "train.memory.plan=off",  # the settings compared, as given
                f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
            ],
        )
    clock = _fit_cpu_clock()
    run_train(cfg, callbacks=[clock])
    steps = [
        r for r in read_jsonl(work / "matrix" / "train" / "metrics.jsonl") if "train/loss" in r
    ]
    seen = [0] + [int(r["train/tokens_seen"]) for r in steps]
    real = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    return {
        "real_tokens": seen[-1],
        "padded_tokens": sum(
            n / r["train/padding_efficiency"] for n, r in zip(real, steps, strict=True)
        ),
        "seconds": sum(n / r["train/tokens_per_s"] for n, r in zip(real, steps, strict=True)),
        "cpu_seconds": clock.cpu_seconds,
        "peak_bytes": max(r["train/peak_memory_gb"] for r in steps) * 2**30,
        "steps": len(steps),
    }


PEER_MODES = ("trl:padded", "trl:packed", "matrix:padded", "matrix:packed")


def peer_child(args) -> None:
    trainer, mode = args.child.split(":")
    work = Path(args.work) / f"{args.child.replace(':', '_')}_{args.rep}"
    work.mkdir(parents=True, exist_ok=True)
    run = run_trl if trainer == "trl" else run_matrix
    r = run(args, mode == "packed", Path(args.work) / "chats.jsonl", work)
    print("RESULT " + json.dumps(r))


def _run_child(args, mode: str, work: Path, rep: int) -> dict | None:
    """One mode in a fresh process (and a fresh run folder); its result, or None (failure
    printed)."""
    import subprocess

    cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--rep", str(rep)]
    cmd += ["--model", args.model, "--rows", str(args.rows), "--seed", str(args.seed)]
    cmd += ["--max-seq-len", str(args.max_seq_len), "--batch-size", str(args.batch_size)]
    cmd += ["--gradient-checkpointing", args.gradient_checkpointing, "--precision", args.precision]
    load = os.getloadavg()[0]
    res = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode or not line:
        print(f"{mode}: failed (exit {res.returncode}): {res.stderr.strip()[-800:]}")
        return None
    r = json.loads(line[-1][len("RESULT ") :])
    r["tokens_per_s"] = r["real_tokens"] / r["seconds"]
    r["tokens_per_cpu_s"] = r["real_tokens"] / r["cpu_seconds"]
    r["load_before"] = load
    return r


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if len(values) > 1 else "-"


def _run_peer_modes(args, work: Path) -> dict[str, list[dict]]:
    rows = peer_rows(args.rows, args.seed, args.max_words)
    (work / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs: dict[str, list[dict]] = {m: [] for m in PEER_MODES}
    for rep in range(args.repeats):
        for mode in PEER_MODES:
            r = _run_child(args, mode, work, rep)
            if r is None:
                continue
            runs[mode].append(r)
            print(
                f"[{rep + 1}/{args.repeats}] {mode:<14} real tokens/s {r['tokens_per_s']:8.1f}   "
                f"per CPU-s {r['tokens_per_cpu_s']:6.1f}   "
                f"real/total tokens {r['real_tokens'] / r['padded_tokens']:.2f}   peak memory "
                f"{r['peak_bytes'] / 2**30:5.2f} GB   {r['steps']} steps, {r['seconds']:.0f} s   "
                f"load {r['load_before']:.1f}",
                flush=True,
            )
    return runs


def peer_main(args) -> None:
    """Runs the four modes `--repeats` times, interleaved (A B C D A B C D ...), so a change
    in the machine's load hits every mode alike; compares per-mode medians."""
    import statistics
    import tempfile

    if args.peer != "trl":
        raise SystemExit(f"--peer {args.peer}: the only peer is trl")
    if args.device != "cpu":
        raise SystemExit("--peer trl runs on CPU (--device cpu)")
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: use 1 or more")
    # the children's runs (checkpoints of every mode and repeat: GBs) go when the bench ends
    with tempfile.TemporaryDirectory(prefix="matrix_bench_peer_") as tmp:
        runs = _run_peer_modes(args, Path(tmp))
    print(
        f"(model={args.model}, rows={args.rows}, max_seq_len={args.max_seq_len}, "
        f"batch_size={args.batch_size}, gradient checkpointing {args.gradient_checkpointing}, "
        f"precision {args.precision}, "
        f"CPU threads={torch.get_num_threads()}, {os.cpu_count()} CPUs, "
        f"repeats={args.repeats})"
    )
    median = {}
    for mode, rs in runs.items():
        if not rs:
            continue
        tps = [r["tokens_per_s"] for r in rs]
        cps = [r["tokens_per_cpu_s"] for r in rs]
        peaks = [r["peak_bytes"] / 2**30 for r in rs]
        median[mode] = {
            "tokens_per_s": statistics.median(tps),
            "tokens_per_cpu_s": statistics.median(cps),
            "peak_gb": statistics.median(peaks),
            "real_over_total": rs[0]["real_tokens"] / rs[0]["padded_tokens"],
            "runs": len(rs),
        }
        print(
            f"median {mode:<14} real tokens/s {median[mode]['tokens_per_s']:8.1f} "
            f"(range {_spread(tps)})   per CPU-s {median[mode]['tokens_per_cpu_s']:6.1f} "
            f"(range {_spread(cps)})   peak {median[mode]['peak_gb']:5.2f} GB "
            f"(range {_spread(peaks, 2)})   {len(rs)} runs"
        )
    best = {
        t: max((m for m in median if m.startswith(t)), key=lambda m: median[m]["tokens_per_s"])
        for t in ("trl", "matrix")
        if any(m.startswith(t) for m in median)
    }
    summary = {"median": median, "runs": runs}
    if len(best) == 2:
        ours, theirs = median[best["matrix"]], median[best["trl"]]
        speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
        cpu_speed = ours["tokens_per_cpu_s"] / theirs["tokens_per_cpu_s"]
        memory = ours["peak_gb"] / theirs["peak_gb"]
        # the same ratio within each round (runs of one round saw about the same load)
        rounds = [
            a["tokens_per_s"] / b["tokens_per_s"]
            for a, b in zip(runs[best["matrix"]], runs[best["trl"]], strict=False)
        ]
        print(
            f"matrix best ({best['matrix']}) / TRL best ({best['trl']}), medians: "
            f"{speed:.2f}x real tokens/s (per round {_spread(rounds, 2)}), "
            f"{cpu_speed:.2f}x real tokens per CPU-second, "
            f"{memory:.2f}x peak memory ({ours['peak_gb'] - theirs['peak_gb']:+.2f} GB)"
        )
        for t in ("padded", "packed"):
            a, b = median.get(f"matrix:{t}"), median.get(f"trl:{t}")
            if a and b:
                print(
                    f"matrix {t} / TRL {t}, medians: "
                    f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x real tokens/s, "
                    f"{a['tokens_per_cpu_s'] / b['tokens_per_cpu_s']:.2f}x per CPU-second, "
                    f"{a['peak_gb'] - b['peak_gb']:+.2f} GB peak"
                )
        summary.update(
            speed_ratio=speed, cpu_speed_ratio=cpu_speed, memory_ratio=memory, round_ratios=rounds
        )
    print(json.dumps(summary, default=float))


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
    ap.add_argument("--peer", default=None, help="trl: compare with TRL's SFTTrainer")
    ap.add_argument("--max-words", type=int, default=300, help="--peer: longest answer")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="--peer: run the four modes this many times, interleaved; report medians",
    )
    ap.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off"),
        default="on",
        help="--peer: for all four runs (on = TRL's SFTConfig default)",
    )
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="--peer: fp32 weights and compute, or bf16 autocast (TRL bf16=True, matrix "
        "trainer.precision=bf16-mixed) for all four runs",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return peer_child(args)
    if args.peer:
        return peer_main(args)

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
            tmp, tok, "chat", args.max_seq_len, args.batch_size, packed, seed=args.seed
        )
        dm.setup()
        r = run_epoch(model, dm, device)
        peak = peak_flops(device, "bf16-mixed")
        r["mfu"] = mfu(
            r["tokens_per_s"], training_flops_per_token(model, r["attention_context"]), peak
        )
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
