"""The throughput variants of the GPU check's MFU step (`make gpu-check` with `--mfu-variants`):
one setting changed per run on the same model, and the table comparing them.

Each variant is keyword arguments of `tools.gpu_check.check_mfu`: `attn` (the attention
kernel), `checkpointing`, `objective`, `extra` (more overrides) and `max_layers` (depth cap).
The default set (`THROUGHPUT`) runs at a fixed depth of 6 layers of the Llama-3-8B shape and
`VARIANT_STEPS` steps each, so that all of it, compile time included, fits one call of a lent
GPU (under 8 minutes on one H100; `BUDGET_S` stops starting variants past 6 minutes and names
the ones left). Only the standard library is imported here (tools.gpu_check's rule).
"""

from __future__ import annotations

from typing import Any

VARIANT_LAYERS = 6  # the depth every THROUGHPUT variant runs at, so their figures compare
VARIANT_STEPS = 12  # median over steps 3-12 (the first two warm up and compile)
BUDGET_S = 360.0  # no new variant starts after this many seconds (the longest takes ~90 s)

COMPILED = ("model.compile=layers",)
FUSED = ("model.cross_entropy=fused",)
_DEPTH = {"max_layers": VARIANT_LAYERS}

MFU_VARIANTS: dict[str, dict[str, Any]] = {
    # the original variants (10 layers on an 80 GB H100; docs/performance.md's first table)
    "sdpa": {"attn": "sdpa"},
    "no activation checkpointing": {"checkpointing": False},
    # DPO as the paper trains it: a frozen reference copy beside the policy, chosen and
    # rejected answers of 800-1,400 words (about 2 x 1,500 tokens a pair)
    "dpo": {"objective": "dpo"},
    # THROUGHPUT: eager vs compiled vs compiled + fused loss vs FlashAttention for packed rows
    "eager": {**_DEPTH},
    "compiled": {**_DEPTH, "extra": COMPILED},
    "compiled + fused loss": {**_DEPTH, "extra": COMPILED + FUSED},
    "flash packed, torch varlen": {**_DEPTH, "attn": "sdpa_varlen"},
    "flash packed, flash-attn": {**_DEPTH, "attn": "flash_attention_2"},
    # DPO's reference: the live fp32 copy, a bf16 copy, log-probs precomputed once
    "dpo, fp32 reference": {
        **_DEPTH,
        "objective": "dpo",
        "extra": ("train.objective.reference_dtype=float32",),
    },
    "dpo, bf16 reference": {
        **_DEPTH,
        "objective": "dpo",
        "extra": ("train.objective.reference_dtype=bfloat16",),
    },
    "dpo, precomputed reference": {
        **_DEPTH,
        "objective": "dpo",
        "extra": ("train.objective.reference=precomputed",),
    },
}
THROUGHPUT = [k for k, v in MFU_VARIANTS.items() if v.get("max_layers") == VARIANT_LAYERS]


def needs_flash_attn(variant: str) -> bool:
    return MFU_VARIANTS[variant].get("attn") == "flash_attention_2"


def variant_table(steps: list) -> str:
    """Markdown table of the MFU variant steps that ran (the report's `Step`s whose figures
    carry a `variant`), each against the `eager` run of the same depth when there is one."""
    rows = [s for s in steps if "variant" in s.figures and s.status == "ok"]
    if not rows:
        return ""
    base = next((s.figures for s in rows if s.figures["variant"] == "eager"), None)
    out = [
        "| MFU variant | layers | attention | tokens/s | x eager | MFU | peak GiB | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        f = s.figures
        tps = f.get("tokens/s") or 0.0
        ratio = f"{tps / base['tokens/s']:.2f}" if base and base.get("tokens/s") else ""
        mfu = f"{100 * f['MFU']:.1f}%" if f.get("MFU") is not None else ""
        out.append(
            f"| {f['variant']} | {f['layers']} | {f['attention']} | {tps:,.0f} | {ratio} "
            f"| {mfu} | {f.get('peak GiB', 0):.1f} | {f.get('compile s', 0):.0f} |"
        )
    return "\n".join(out) + "\n"
