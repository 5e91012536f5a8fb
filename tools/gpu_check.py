"""The one-call GPU check of the training stack (`make gpu-check`).

On a CUDA machine it runs, through the train stage itself (`run_train` on configs composed
from conf/ as train.py composes them), every GPU path the CPU tests cannot reach:

1. per attention kernel that imports (sdpa, flex_attention, flash_attention_2, sdpa_varlen): SFT steps in
   bf16 on a random-init model, DPO steps from its export, and packed == padded loss on CUDA
   (with the leak control: positions that do not restart change the loss far more);
2. FSDP on one GPU with activation checkpointing, whose exported Hugging Face folder reloads
   to the logits of the run's final checkpoint;
3. MFU of the Llama-3-8B architecture (random init, depth cut to fit memory, sequence 4096,
   bf16 mixed precision), from the train stage's own step metrics;
4. in-process generation tokens/s (matrix.llm.hf.HFBackend, bf16).

`--mfu-variants` runs only the MFU step, once per throughput variant (compiled layers, the
fused loss, FlashAttention for packed rows, DPO's reference kinds; tools/gpu_check_variants.py),
and adds their table to the report.

It writes `gpu_check.json` and `gpu_check.md` (one table) into --out. Without CUDA the same
command runs the dry mode: it composes every step's config, checks the wheel list (the
distributions a bare CUDA machine lacks, scripts/gpu_wheels.txt, built into .gpu-wheels/ by
scripts/build_gpu_wheels.sh) and rehearses a tiny CPU SFT run and a generation in a process
that can import only what a bare CUDA machine has plus the listed wheels; the report names
every step it skipped.

    python -m tools.gpu_check --out runs/gpu_check     # what `make gpu-check` runs

Only the standard library is imported at module level: the rehearsal installs its import
guard before anything else loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.gpu_check_variants import (
    BUDGET_S,
    MFU_VARIANTS,
    THROUGHPUT,
    VARIANT_STEPS,
    needs_flash_attn,
    variant_table,
)

log = logging.getLogger("matrix.gpu_check")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
WHEEL_LIST = REPO / "scripts" / "gpu_wheels.txt"
WHEELS_DIR = REPO / ".gpu-wheels"
TOKENIZER = "smollm2-tokenizer"  # inside WHEELS_DIR: the tokenizer the random models use
WHEELS_MAX_BYTES = 60 * 2**20
# What a bare CUDA machine is taken to have (with everything these require).
BARE = ("torch", "transformers", "lightning", "accelerate", "peft")
# sdpa_varlen: the project's packed-row kernel, PyTorch's FlashAttention varlen call on CUDA
KERNELS = ("sdpa", "flex_attention", "flash_attention_2", "sdpa_varlen")
MFU_TITLE = "MFU, Llama-3-8B architecture (seq 4096, bf16)"

# Llama-3-8B (meta-llama/Meta-Llama-3-8B config.json) without its depth and vocabulary: the
# random model takes the tokenizer's vocabulary, and its depth is cut to fit memory.
LLAMA3_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1.0e-5,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
}
LLAMA3_8B_LAYERS = 32
# A small model for the kernel steps: head_dim 64 (what the fused kernels are tuned for).
SMALL = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
SMALL_ARCH = {"model_type": "llama", **SMALL, "max_position_embeddings": 2048}
# SmolLM2-135M's architecture, for generation speed (the embedded default's shape).
SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}


@dataclass
class Step:
    """One line of the report."""

    name: str
    status: str = "ok"  # ok | failed | skipped
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Report:
    mode: str  # gpu | dry
    device: str
    steps: list[Step] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    # Where each finished step rewrites the report, so a check stopped at a time limit still
    # leaves the table of the steps it finished.
    autosave: Path | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        data = {**asdict(self), "ok": self.ok}
        data.pop("autosave")
        (out / "gpu_check.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (out / "gpu_check.md").write_text(self.markdown(), encoding="utf-8")

    def markdown(self) -> str:
        head = f"`make gpu-check`, {self.mode} mode on {self.device}\n\n"
        rows = ["| step | status | s | figures | note |", "|---|---|---|---|---|"]
        for s in self.steps:
            figs = ", ".join(f"{k} {_fmt(v)}" for k, v in s.figures.items())
            note = s.note.replace("|", "/").replace("\n", " ")
            rows.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {figs} | {note} |")
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        tables = ["\n".join(rows) + "\n", variant_table(self.steps), versions + "\n"]
        return head + "\n".join(t for t in tables if t)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextlib.contextmanager
def timed(report: Report, name: str) -> Iterator[Step]:
    """A report step: its time, and any exception recorded as a failure (the check goes on)."""
    step = Step(name)
    t0 = time.perf_counter()
    try:
        yield step
    except Exception as e:  # noqa: BLE001 - every failure is reported, the next step runs
        step.status = "failed"
        step.note = f"{type(e).__name__}: {e}"[:600]
        log.error("%s failed:\n%s", name, traceback.format_exc())
    finally:
        step.seconds = time.perf_counter() - t0
        report.steps.append(step)
        if report.autosave is not None:
            report.write(report.autosave)
        _free_gpu_memory()
        log.info("%s: %s %s %s", name, step.status, step.figures, step.note)


def _free_gpu_memory() -> None:
    """Between steps: what a finished (or failed) step held goes back to the GPU."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- inputs -----------------------------------------------------------------------------------
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "runs",
    "fast",
    "slow",
    "blue",
    "green",
    "house",
    "tree",
    "river",
    "sky",
    "stone",
    "light",
    "rain",
    "city",
    "market",
    "bridge",
    "winter",
    "summer",
    "reads",
    "writes",
    "builds",
    "music",
    "garden",
    "engine",
    "signal",
]


def write_data(
    folder: Path,
    sft_rows: int,
    words: tuple[int, int],
    seed: int = 0,
    dpo_words: tuple[int, int] = (3, 12),
) -> dict:
    """Synthetic SFT rows (some multi-turn) and DPO pairs ('yes ...' chosen, 'no ...'
    rejected: learnable, so DPO's reward margin must grow), answers of `dpo_words` words."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    sft, dpo = folder / "sft.jsonl", folder / "dpo.jsonl"
    with open(sft, "w", encoding="utf-8") as f:
        for i in range(sft_rows):
            msgs = [
                {"role": "user", "content": text(4, 30)},
                {"role": "assistant", "content": text(*words)},
            ]
            if i % 3 == 0:
                msgs += [
                    {"role": "user", "content": text(3, 10)},
                    {"role": "assistant", "content": text(3, 40)},
                ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    with open(dpo, "w", encoding="utf-8") as f:
        for _ in range(64):
            body = text(*dpo_words)
            row = {
                "prompt": [{"role": "user", "content": text(3, 12)}],
                "chosen": "yes " + body,
                "rejected": "no " + body,
            }
            f.write(json.dumps(row) + "\n")
    return {"sft": sft, "dpo": dpo}


def tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer folder: shipped in .gpu-wheels/ (a bare machine has no embedded
    model package), else the embedded model's folder."""
    shipped = WHEELS_DIR / TOKENIZER
    if (shipped / "tokenizer.json").is_file():
        return shipped
    from matrix.llm.embedded import smollm2_hf_dir

    return Path(smollm2_hf_dir())


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def _model_config(spec: dict) -> list[str]:
    """Overrides that set model.config to `spec` (model=tiny_debug's random init)."""
    return [f"++model.config.{k}={v}" for k, v in spec.items()]


def base_overrides(runs: Path, name: str, tok: Path, cuda: bool) -> list[str]:
    return [
        "model=tiny_debug",
        f"model.path={tok}",
        "logger=none",
        f"paths.runs_dir={runs}",
        f"run.name={name}",
        f"trainer={'gpu' if cuda else 'cpu'}",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "train.checkpoint.every_n_steps=0",
        # the training report draws with matplotlib, which a bare GPU machine lacks (and the
        # check measures kernels, not plots)
        "~train.callbacks.report",
    ]


# -- the steps --------------------------------------------------------------------------------
def kernel_availability() -> dict[str, str | None]:
    """Each attention kernel -> None if it imports here, else why not."""
    out: dict[str, str | None] = {"sdpa": None, "sdpa_varlen": None}
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        out["flex_attention"] = None
    except ImportError as e:
        out["flex_attention"] = f"torch has no flex_attention ({e})"
    try:
        import flash_attn  # noqa: F401

        out["flash_attention_2"] = None
    except ImportError as e:
        out["flash_attention_2"] = f"flash_attn does not import ({e})"
    return out


def sft_dpo_overrides(runs: Path, kernel: str, data: dict, tok: Path, cuda: bool, steps: int):
    common = [
        *_model_config(SMALL),
        f"model.attn_implementation={kernel}",
        "data.max_seq_len=512",
        "data.batch_size=4",
        "data.packing=true",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=1000",  # max_steps decides
        "optimizer.lr=1e-3",
    ]
    sft = [
        *base_overrides(runs, f"sft_{kernel}", tok, cuda),
        *common,
        "objective=sft",
        f"data.path={data['sft']}",
    ]
    hf = runs / f"sft_{kernel}" / "train" / "hf_model"
    dpo = [
        *base_overrides(runs, f"dpo_{kernel}", tok, cuda),
        *common,
        "objective=dpo",
        f"data.path={data['dpo']}",
        f"model.path={hf}",
        "model.init=pretrained",
        "model.chat_template=null",
        "train.objective.beta=0.1",
    ]
    return sft, dpo


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "train" / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steady(rows: list[dict], key: str, skip: int = 2) -> float | None:
    """Median of a per-step metric after the first `skip` steps (compilation, warm-up)."""
    vals = [r[key] for r in rows if key in r]
    vals = vals[skip:] if len(vals) > skip else vals
    return float(statistics.median(vals)) if vals else None


def check_sft_dpo(
    report: Report, runs: Path, kernel: str, data: dict, tok: Path, steps: int, cuda: bool = True
):
    from matrix.train.run import run_train

    sft_o, dpo_o = sft_dpo_overrides(runs, kernel, data, tok, cuda, steps)
    with timed(report, f"sft bf16 [{kernel}]") as s:
        m = run_train(compose(sft_o))
        rows = _metrics(runs / f"sft_{kernel}")
        losses = [r["train/loss"] for r in rows if "train/loss" in r]
        s.figures = {
            "steps": m["counts"]["steps"],
            "loss first": losses[0],
            "loss last": losses[-1],
            "tokens/s": _steady(rows, "train/tokens_per_s"),
        }
        assert m["attention"] == kernel, f"ran {m['attention']}, not {kernel}"
        assert m["counts"]["steps"] == steps and all(math.isfinite(x) for x in losses)
        assert losses[-1] < losses[0], "SFT loss did not go down"
    with timed(report, f"dpo bf16 [{kernel}]") as s:
        m = run_train(compose(dpo_o))
        rows = _metrics(runs / f"dpo_{kernel}")
        margins = [r["train/rewards/margin"] for r in rows if "train/rewards/margin" in r]
        s.figures = {
            "steps": m["counts"]["steps"],
            "loss last": rows[-1].get("train/loss"),
            "reward margin last": margins[-1] if margins else None,
            "tokens/s": _steady(rows, "train/tokens_per_s"),
        }
        assert m["counts"]["steps"] == steps
        assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    with timed(report, f"packed == padded [{kernel}]") as s:
        # a random model with large weights: its tokens depend strongly on their context, so
        # the leak control moves far (a briefly trained one barely looks back)
        sharp = runs / "sharp_random"
        if not (sharp / "config.json").is_file():
            build_random_model(sharp, {**SMALL_ARCH, "initializer_range": 0.3}, tok)
        s.figures = packed_vs_padded(sharp, kernel, data, "cuda" if cuda else "cpu")


def packed_vs_padded(hf_dir: Path, kernel: str, data: dict, device: str = "cuda") -> dict:
    """The same sequences padded (one per row) and packed (several per row), in bf16 autocast
    with `kernel`: the SFT loss and every sequence's summed log-prob must agree to bf16
    precision (relative gap < 1e-2), and a real leak (positions running on across the packed
    sequences, so later ones attend to earlier ones) must move the sequence log-probs at least
    ten times as far, or the comparison could not tell a leak from none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from matrix.common.io import read_jsonl
    from matrix.train.attention import VARLEN, register_varlen
    from matrix.train.batching import collate_rows
    from matrix.train.examples import tokenize_sft
    from matrix.train.lm import forward_logits, sequence_logps
    from matrix.train.sft import sft_loss

    if kernel == VARLEN:
        register_varlen()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation=kernel)
    model = model.to(device).eval()
    seqs, _ = tokenize_sft(tok, list(read_jsonl(data["sft"]))[:12], max_length=256)
    pad = tok.pad_token_id
    padded = collate_rows([[q] for q in seqs], packed=False, pad_id=pad)
    packed = collate_rows([seqs[:7], seqs[7:]], packed=True, pad_id=pad)
    leaky = dict(packed)
    leaky["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(
        packed["position_ids"]
    )

    def run(batch: dict) -> tuple[float, torch.Tensor]:
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            logits = forward_logits(model, b)
        loss = float(sft_loss(logits, b["labels"])[0])
        return loss, sequence_logps(logits, b["labels"], b["seq_ids"], len(seqs)).cpu()

    (lp, sp), (lq, sq), (_, sl) = run(padded), run(packed), run(leaky)
    loss_gap = abs(lq - lp) / lp
    seq_gap = float(((sq - sp).abs() / sp.abs()).max())
    leak_gap = float(((sl - sp).abs() / sp.abs()).max())
    figures = {
        "loss padded": lp,
        "loss packed": lq,
        "loss gap": loss_gap,
        "seq logp gap": seq_gap,
        "leak seq logp gap": leak_gap,
    }
    assert loss_gap < 1e-2 and seq_gap < 1e-2, f"packed differs from padded: {figures}"
    assert leak_gap > 10 * seq_gap, f"the leak control moved too little to tell: {figures}"
    return figures


def checkpoint_logits_match(ckpt: Path, hf_dir: Path, tokens: list[int]) -> float:
    """Max |logit| difference between the exported folder reloaded with transformers and the
    run's final Lightning checkpoint (a full state dict) loaded into the same architecture.
    Both hold the same float32 weights, so the difference is exactly 0 unless the export is
    wrong; returns it for the report."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    config = AutoConfig.from_pretrained(hf_dir)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = fresh.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    assert not missing and not unexpected, f"checkpoint keys: missing {missing}, extra {unexpected}"
    ids = torch.tensor([tokens])
    with torch.no_grad():
        a = exported(input_ids=ids).logits
        b = fresh(input_ids=ids).logits
    return float((a - b).abs().max())


def fsdp_overrides(
    runs: Path, name: str, data: dict, tok: Path, devices: int, steps: int, preset: str = "fsdp"
):
    return [
        *base_overrides(runs, name, tok, True),
        f"trainer={preset}",
        "trainer.max_epochs=1000",  # max_steps decides
        f"trainer.devices={devices}",
        "trainer.fsdp.state_dict_type=full",
        "trainer.fsdp.activation_checkpointing=true",
        *_model_config(SMALL),
        "model.attn_implementation=sdpa",
        "objective=sft",
        f"data.path={data['sft']}",
        "data.max_seq_len=512",
        "data.batch_size=4",
        f"trainer.max_steps={steps}",
        f"train.checkpoint.every_n_steps={steps}",
        "optimizer.lr=1e-3",
    ]


# trainer=fsdp is FSDP2 (fully_shard); trainer=fsdp1 the older FSDP wrapper
FSDP_STEPS = {
    "fsdp": "fsdp 1 GPU + activation checkpointing, export reload",
    "fsdp1": "fsdp1 (FSDP1 wrapper) 1 GPU + activation checkpointing, export reload",
}


def check_fsdp(
    report: Report, runs: Path, data: dict, tok: Path, steps: int, preset: str = "fsdp"
) -> None:
    from matrix.train.run import run_train

    with timed(report, FSDP_STEPS[preset]) as s:
        m = run_train(compose(fsdp_overrides(runs, preset, data, tok, 1, steps, preset)))
        out = runs / preset / "train"
        diff = checkpoint_logits_match(out / "checkpoints" / "last.ckpt", out / "hf_model", TOKENS)
        rows = _metrics(runs / preset)
        s.figures = {
            "steps": m["counts"]["steps"],
            "loss last": rows[-1].get("train/loss") if rows else None,
            "max |logit diff|": diff,
        }
        assert m["counts"]["steps"] == steps and diff == 0.0


TOKENS = [1, 504, 2583, 17, 421, 3079, 30, 198, 2]  # any ids of the SmolLM2 vocabulary


def mfu_layers(total_bytes: int, vocab: int) -> int:
    """Decoder layers of the Llama-3-8B shape that fit half the GPU's memory with fp32 master
    weights, gradients and AdamW states (16 bytes a parameter); the rest is for activations."""
    h, i, kv = LLAMA3_8B["hidden_size"], LLAMA3_8B["intermediate_size"], 1024
    per_layer = (2 * h * h + 2 * h * kv + 3 * h * i) * 16
    embed = 2 * vocab * h * 16
    return max(1, min(LLAMA3_8B_LAYERS, int((0.5 * total_bytes - embed) // per_layer)))


def mfu_overrides(
    runs: Path,
    tok: Path,
    data: dict,
    layers: int,
    steps: int,
    cuda: bool,
    attn: str = "auto",
    checkpointing: bool = True,
    name: str = "mfu",
    objective: str = "sft",
    extra: tuple[str, ...] = (),
):
    return [
        *base_overrides(runs, name, tok, cuda),
        *_model_config({**LLAMA3_8B, "num_hidden_layers": layers}),
        f"model.gradient_checkpointing={str(checkpointing).lower()}",
        f"model.attn_implementation={attn}",
        f"objective={objective}",
        f"data.path={data[objective]}",
        "data.max_seq_len=4096",
        "data.packing=true",
        "data.batch_size=1",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=1000",
        "train.checkpoint.enabled=false",  # 16 bytes a parameter on disk, for nothing
        "train.export=false",  # 5 GB of bf16 weights nobody reads; it ran past a call's limit
        "optimizer.lr=1e-5",
        *extra,
    ]


def check_mfu(
    report: Report,
    runs: Path,
    folder: Path,
    tok: Path,
    steps: int,
    variant: str = "",
    attn: str = "auto",
    checkpointing: bool = True,
    objective: str = "sft",
    extra: tuple[str, ...] = (),
    max_layers: int | None = None,
) -> None:
    import torch
    from transformers import AutoTokenizer

    from matrix.train.run import run_train

    name = "_".join(["mfu", *re.findall(r"[a-z0-9]+", variant.lower())])
    with timed(report, f"{MFU_TITLE}{f' [{variant}]' if variant else ''}") as s:
        vocab = len(AutoTokenizer.from_pretrained(tok))
        layers = mfu_layers(torch.cuda.get_device_properties(0).total_memory, vocab)
        layers = min(layers, max_layers or layers)
        data = write_data(folder, sft_rows=400, words=(400, 900), seed=1, dpo_words=(800, 1400))
        overrides = mfu_overrides(
            runs, tok, data, layers, steps, True, attn, checkpointing, name, objective, extra
        )
        m = run_train(compose(overrides))
        rows = _metrics(runs / name)
        s.figures = {
            **({"variant": variant} if variant else {}),
            "layers": f"{layers}/{LLAMA3_8B_LAYERS}",
            "vocab": vocab,
            "attention": m["attention"],
            "parameters": m["counts"]["parameters"],
            "tokens/s": _steady(rows, "train/tokens_per_s"),
            "MFU": _steady(rows, "train/mfu"),
            "padding efficiency": _steady(rows, "train/padding_efficiency"),
            "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
            "compile s": sum(r.get("train/compile_s", 0.0) for r in rows),
        }
        torch.cuda.reset_peak_memory_stats()
        assert s.figures["MFU"] is not None, "no MFU: the GPU is not in Lightning's FLOPs table"


def build_random_model(out: Path, spec: dict, tok: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok)
    config = AutoConfig.for_model(
        **spec,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def generation_speed(model_dir: Path, n_chats: int, max_new_tokens: int) -> dict:
    """Completion tokens/s of the in-process backend (HFBackend) on one batch of chats, after a
    warm-up batch. A random model never stops early, so every row writes max_new_tokens."""
    from matrix.llm.hf import HFBackend
    from matrix.llm.protocol import Sampling

    backend = HFBackend(str(model_dir), batch_size=n_chats)
    chats = [
        [{"role": "user", "content": f"Question {i}: {WORDS[i % len(WORDS)]}?"}]
        for i in range(n_chats)
    ]
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    backend.generate(chats[:2], sampling)  # load + warm-up
    t0 = time.perf_counter()
    out = backend.generate(chats, sampling)
    seconds = time.perf_counter() - t0
    tokens = sum(c.completion_tokens for c in out)
    return {
        "device": backend.device,
        "batch": n_chats,
        "completion tokens": tokens,
        "tokens/s": tokens / seconds,
    }


def check_generation(report: Report, folder: Path, tok: Path) -> None:
    with timed(report, "in-process generation (HFBackend, SmolLM2-135M shape, bf16)") as s:
        model = build_random_model(folder / "smollm2_135m_random", SMOLLM2_135M, tok)
        s.figures = generation_speed(model, n_chats=64, max_new_tokens=256)


# -- the wheel list and the bare-machine rehearsal -------------------------------------------
def wheel_list(path: Path | None = None) -> list[str]:
    lines = (path or WHEEL_LIST).read_text(encoding="utf-8").splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def bare_distributions(roots: tuple[str, ...] = BARE) -> set[str]:
    """`roots` and everything they require (not extras), as installed here."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for r in reqs:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def bare_site(folder: Path, dists: set[str]) -> Path:
    """A site folder holding only `dists` (links to their installed top-level files and
    metadata): with `python -S` and this folder on PYTHONPATH, a module of any other
    distribution is absent, as on a bare CUDA machine with the listed wheels."""
    import importlib.metadata as md

    folder.mkdir(parents=True, exist_ok=True)
    for d in sorted(dists):
        try:
            dist = md.distribution(d)
        except md.PackageNotFoundError:
            continue
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if ".." not in Path(str(f)).parts}
        for top in tops:
            link = folder / top
            if not link.exists() and (base / top).exists():
                link.symlink_to(base / top)
    return folder


class AbsentImports:
    """Last on sys.meta_path: records every top-level module no finder found (the optional
    imports that fall back on a bare machine, or the missing one that breaks the run)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(self, name: str, path=None, target=None):
        if path is None:
            self.names.add(name.split(".")[0])
        return None


def rehearse(out: Path, tok: Path) -> dict:
    """In a `python -S` process whose path holds only bare_site(): a tiny CPU SFT run through
    run_train and a short in-process generation. Returns what ran and which imports were
    absent."""
    absent = AbsentImports()
    sys.meta_path.append(absent)
    result: dict[str, Any] = {"ok": False}
    try:
        from matrix.train.run import run_train

        data = write_data(out / "data", sft_rows=24, words=(3, 40))
        cfg = compose(
            [
                *base_overrides(out / "runs", "rehearsal", tok, cuda=False),
                "objective=sft",
                f"data.path={data['sft']}",
                "data.max_seq_len=256",
                "trainer.max_steps=2",
            ]
        )
        manifest = run_train(cfg)
        gen = generation_speed(out / "runs" / "rehearsal" / "train" / "hf_model", 2, 4)
        result.update(
            ok=True, steps=manifest["counts"]["steps"], generated=gen["completion tokens"]
        )
    except Exception as e:  # noqa: BLE001 - reported to the parent
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["absent"] = sorted(absent.names)
    return result


def check_wheels(report: Report, wheels: Path) -> None:
    """The wheel folder, if built, holds a pure-Python wheel of every listed distribution, the
    tokenizer, and stays under 60 MiB."""
    with timed(report, "wheel list") as s:
        names = wheel_list()
        s.figures = {"listed": len(names)}
        if not wheels.is_dir():
            s.note = f"{wheels} not built yet (scripts/build_gpu_wheels.sh); list only"
            return
        files = [p.name for p in wheels.glob("*.whl")]
        have = {_norm(f.split("-")[0]) for f in files}
        missing = [n for n in names if _norm(n) not in have]
        impure = [f for f in files if not f.endswith("-none-any.whl")]
        size = sum(p.stat().st_size for p in wheels.rglob("*") if p.is_file())
        s.figures.update({"wheels": len(files), "MiB": size / 2**20})
        assert not missing, f"no wheel for {missing} in {wheels}: run scripts/build_gpu_wheels.sh"
        assert not impure, f"not pure-Python wheels: {impure}"
        assert (wheels / TOKENIZER / "tokenizer.json").is_file(), f"no {TOKENIZER}/ in {wheels}"
        assert size <= WHEELS_MAX_BYTES, f"{wheels} holds {size / 2**20:.1f} MiB > 60 MiB"


def check_rehearsal(report: Report, out: Path, tok: Path) -> None:
    with timed(report, "bare-machine rehearsal (CPU SFT run + generation)") as s:
        wheels = sorted(WHEELS_DIR.glob("*.whl"))
        if wheels:  # the built wheels themselves, installed as scripts/gpu_check.sh does
            paths = [bare_site(out / "site", bare_distributions()), out / "wheel-site"]
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
                + ["--target", str(paths[1]), *map(str, wheels)],
                check=True,
                capture_output=True,
            )
            s.note = f"with the {len(wheels)} wheels of {WHEELS_DIR.name}/"
        else:  # the listed distributions as installed here
            paths = [bare_site(out / "site", bare_distributions() | set(wheel_list()))]
            s.note = (
                f"with the listed distributions as installed here ({WHEELS_DIR.name}/ not built)"
            )
        proc = subprocess.run(
            [
                *(sys.executable, "-S", "-m", "tools.gpu_check"),
                *("--rehearse", "--out", str(out), "--tokenizer", str(tok)),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [REPO, *paths[::-1]]))},
            cwd=REPO,
            timeout=600,
        )
        result_file = out / "rehearsal.json"
        if not result_file.is_file():
            raise RuntimeError(f"rehearsal died (rc {proc.returncode}): {proc.stderr[-1500:]}")
        r = json.loads(result_file.read_text())
        s.figures = {k: r[k] for k in ("steps", "generated") if k in r}
        s.figures["absent optional imports"] = len(r["absent"])  # listed in rehearsal.json
        assert r["ok"], f"{r.get('error')} (absent imports: {r['absent']})"


def compose_all(report: Report, runs: Path, data: dict, tok: Path) -> None:
    """Every config the GPU steps run composes and passes the config checks, and the train
    stage's own preflight for data and model (all but the DPO steps, whose model an SFT step
    writes first; the trainer is CPU here, as a dry run has no GPU)."""
    from matrix.core.config_check import config_problems
    from matrix.train.preflight import validate

    with timed(report, "compose every step's config") as s:
        cfgs, starts = [], []
        importable = kernel_availability()
        for k in KERNELS:
            sft, dpo = sft_dpo_overrides(runs, k, data, tok, True, 20)
            cfgs += [sft, dpo]
            if importable[k] is None:  # an explicit kernel that cannot import fails preflight
                starts.append(sft_dpo_overrides(runs, k, data, tok, False, 20)[0])
        cfgs += [fsdp_overrides(runs, p, data, tok, 1, 10, p) for p in FSDP_STEPS]
        cfgs.append(mfu_overrides(runs, tok, data, 8, 20, cuda=True))
        starts.append(mfu_overrides(runs, tok, data, 8, 20, cuda=False))
        for v, kw in MFU_VARIANTS.items():  # `--mfu-variants`
            kw = {k: x for k, x in kw.items() if k != "max_layers"}
            cfgs.append(mfu_overrides(runs, tok, data, 8, 20, cuda=True, **kw))
            if importable["flash_attention_2"] is None or not needs_flash_attn(v):
                starts.append(mfu_overrides(runs, tok, data, 8, 20, cuda=False, **kw))
        for o in cfgs:
            config_problems(compose(o), "train").raise_if_any("train")
        for o in starts:
            validate(compose(o)).raise_if_any("train")
        s.figures = {"configs": len(cfgs), "preflights": len(starts)}


# -- the command -----------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for d in (*BARE, "hydra-core", "flash-attn"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[d] = md.version(d)
    return out


# What pyproject.toml requires of the bare machine's packages.
NEEDED = {
    "torch": ">=2.4",
    "transformers": ">=5.0,<6",
    "lightning": ">=2.4",
    "accelerate": ">=1.0",
    "peft": ">=0.12",
}


def check_versions(report: Report) -> None:
    """The machine's torch, transformers, lightning, accelerate and peft are versions this
    project supports (a bare machine brings its own)."""
    import importlib.metadata as md

    from packaging.specifiers import SpecifierSet

    with timed(report, "package versions") as s:
        bad = []
        for dist, spec in NEEDED.items():
            have = md.version(dist)
            s.figures[dist] = have
            if not SpecifierSet(spec).contains(have.split("+")[0], prereleases=True):
                bad.append(f"{dist} {have} (needs {spec}: pip install '{dist}{spec}')")
        assert not bad, "; ".join(bad)


def run_variants(report: Report, runs: Path, folder: Path, tok: Path, names: list[str]) -> None:
    """The MFU step once per variant named (the default set runs `VARIANT_STEPS` steps each);
    a variant that cannot run here, or would start past `BUDGET_S`, is reported skipped."""
    t0 = time.perf_counter()
    flash = kernel_availability()["flash_attention_2"]
    for variant in names:
        kw = MFU_VARIANTS[variant]
        steps = VARIANT_STEPS if variant in THROUGHPUT else 20
        if needs_flash_attn(variant) and flash is not None:
            report.steps.append(Step(f"{MFU_TITLE} [{variant}]", "skipped", note=flash))
        elif time.perf_counter() - t0 > BUDGET_S:
            note = f"time budget: {BUDGET_S:.0f} s of variants spent"
            report.steps.append(Step(f"{MFU_TITLE} [{variant}]", "skipped", note=note))
        else:
            check_mfu(report, runs, folder, tok, steps, variant, **kw)


def run(out: Path, dry: bool, steps: int = 20, mfu_variants: list[str] | None = None) -> Report:
    import torch

    cuda = torch.cuda.is_available() and not dry
    device = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA device)"
    report = Report("gpu" if cuda else "dry", device, versions=versions(), autosave=out)
    runs = out / "runs"
    tok = tokenizer_dir()
    data = write_data(out / "data", sft_rows=160, words=(10, 120))
    check_versions(report)
    if mfu_variants is not None and cuda:
        run_variants(report, runs, out / "mfu_data", tok, mfu_variants or THROUGHPUT)
        return report
    compose_all(report, runs, data, tok)
    check_wheels(report, WHEELS_DIR)
    if not cuda:
        check_rehearsal(report, out / "rehearsal", tok)
        why = "no CUDA device (dry mode)"
        for k in KERNELS:
            for what in ("sft bf16", "dpo bf16", "packed == padded"):
                report.steps.append(Step(f"{what} [{k}]", "skipped", note=why))
        for variant in THROUGHPUT:
            report.steps.append(Step(f"{MFU_TITLE} [{variant}]", "skipped", note=why))
        for name in (
            *FSDP_STEPS.values(),
            MFU_TITLE,
            "in-process generation (HFBackend, SmolLM2-135M shape, bf16)",
        ):
            report.steps.append(Step(name, "skipped", note=why))
        return report
    for kernel, why in kernel_availability().items():
        if why is not None:
            for what in ("sft bf16", "dpo bf16", "packed == padded"):
                report.steps.append(Step(f"{what} [{kernel}]", "skipped", note=why))
            continue
        check_sft_dpo(report, runs, kernel, data, tok, steps)
    check_mfu(report, runs, out / "mfu_data", tok, steps=20)
    check_generation(report, out, tok)
    # last: they leave a process group behind (the second run reuses it)
    for preset in FSDP_STEPS:
        check_fsdp(report, runs, data, tok, steps=10, preset=preset)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_check"))
    ap.add_argument("--dry", action="store_true", help="the dry mode even where CUDA is present")
    ap.add_argument(
        "--mfu-variants",
        nargs="*",
        choices=list(MFU_VARIANTS),
        default=None,
        metavar="VARIANT",
        help="only the MFU step, once per variant named (default: each of "
        f"{', '.join(repr(v) for v in THROUGHPUT)}); GPU only",
    )
    ap.add_argument("--rehearse", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for var, value in (
        ("WANDB_MODE", "offline"),
        ("HF_HUB_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(var, value)
    if args.rehearse:
        out.mkdir(parents=True, exist_ok=True)
        result = rehearse(out, Path(args.tokenizer))
        (out / "rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result["ok"] else 1
    t0 = time.perf_counter()
    report = run(out, args.dry, mfu_variants=args.mfu_variants)
    report.write(out)
    print(report.markdown())
    print(
        f"{'passed' if report.ok else 'FAILED'} in {time.perf_counter() - t0:.0f}s; {out / 'gpu_check.json'}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
