"""The one place that picks the attention kernel.

`model.attn_implementation=auto` takes the fastest kernel that is installed and correct for
the batch layout: FlashAttention-2 (varlen for packed rows) when `flash_attn` imports on a
CUDA device; otherwise on GPU flex_attention for packed rows (a block-sparse mask instead of
a dense one) and PyTorch SDPA for padded rows; SDPA on CPU. An explicit choice that cannot run
here fails with the reason instead of silently falling back.
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)

CHOICES = ("auto", "flash_attention_2", "flex_attention", "sdpa", "eager")


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def select_attention(requested: str, packed: bool, cuda: bool) -> str:
    """Attention implementation name for `from_pretrained(attn_implementation=...)`."""
    if requested not in CHOICES:
        raise ValueError(f"model.attn_implementation={requested!r}; choose one of {CHOICES}")
    if requested == "flash_attention_2":
        if not cuda:
            raise ValueError("model.attn_implementation=flash_attention_2 needs a CUDA device")
        if not flash_attn_available():
            raise ValueError(
                "model.attn_implementation=flash_attention_2 but flash_attn is not installed; "
                "`pip install flash-attn --no-build-isolation` or use auto/sdpa"
            )
        choice, why = requested, "requested"
    elif requested != "auto":
        choice, why = requested, "requested"
    elif cuda and flash_attn_available():
        choice, why = "flash_attention_2", "flash_attn installed, CUDA device"
    elif cuda and packed:
        choice, why = "flex_attention", "CUDA without flash_attn, packed rows"
    elif cuda:
        choice, why = "sdpa", "CUDA without flash_attn, padded rows"
    else:
        choice, why = "sdpa", "CPU"
    log.info("attention: %s (%s; packed=%s)", choice, why, packed)
    return choice
