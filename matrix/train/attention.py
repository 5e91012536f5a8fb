"""The one place that picks the attention kernel.

`model.attn_implementation=auto` takes the fastest kernel that is installed and correct for
the batch layout: FlashAttention-2 (varlen for packed rows) when `flash_attn` imports on a
CUDA device; otherwise on GPU flex_attention for packed rows (a block-sparse mask instead of
a dense one) and PyTorch SDPA for padded rows; on CPU `sdpa_varlen` for packed rows (below) and
SDPA for padded rows. An explicit choice that cannot run here fails with the reason instead of
silently falling back.

`sdpa_varlen` is registered with transformers' attention interface. Plain `sdpa` on a packed
row gets a dense `[batch, 1, T, T]` block-diagonal mask from transformers and computes every
block of the T x T scores, the ones the mask then throws away included; `eager` also keeps the
`[batch, heads, T, T]` attention weights of every layer for the backward pass (2.6 GB more per
step than SDPA at 2 x 1024 tokens of SmolLM2-135M). `sdpa_varlen` asks for no mask: it cuts
each row where its position ids restart and runs causal SDPA on every sequence alone, so
PyTorch's fused kernel sees only the diagonal blocks. Right padding (trailing positions
restarting at 0, as `collate_rows` writes them) is one more segment that nothing real attends
to, so padded rows are handled the same way.
On CUDA, with bf16/fp16 inputs (bf16 autocast included), the same cuts go to PyTorch's own
FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`, torch 2.10+) in one call
for the whole batch: FlashAttention-2 for packed rows without the flash-attn package. The
per-sequence SDPA loop stays for the CPU, fp32 and dropout, and where torch lacks the kernel.
Hand-written because transformers' flash/flex paths need the flash-attn package or a compiler.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

VARLEN = "sdpa_varlen"
CHOICES = ("auto", "flash_attention_2", "flex_attention", "sdpa", VARLEN, "eager")


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the [start, end) spans of its sequences: a sequence starts wherever the
    position id does not follow the previous one (0 after anything, as packing writes them)."""
    rows = position_ids.detach().to("cpu")
    if rows.dim() == 1:
        rows = rows.unsqueeze(0)
    width = rows.size(1)
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[:, 1:] = rows[:, 1:] != rows[:, :-1] + 1
    out = []
    for r in range(rows.size(0)):
        s = starts[r].nonzero().flatten().tolist()
        out.append(list(zip(s, s[1:] + [width], strict=True)))
    return out


def cu_seqlens(bounds: list[list[tuple[int, int]]], width: int) -> torch.Tensor:
    """The varlen kernels' cumulative sequence offsets [n + 1] (int32) over the batch's rows
    laid end to end (`width` positions a row), from `segment_bounds`."""
    starts = [r * width + s for r, spans in enumerate(bounds) for s, _ in spans]
    return torch.tensor([*starts, len(bounds) * width], dtype=torch.int32)


def _torch_varlen():
    """PyTorch's FlashAttention varlen function, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The half dtype the varlen kernel runs in (the inputs' own, or autocast's), or None."""
    if query.dtype in (torch.bfloat16, torch.float16):
        return query.dtype
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def varlen_flash(query, key, value, bounds, scaling, gqa: bool, dtype: torch.dtype):
    """Causal attention of every [start, end) span of every row in one FlashAttention call:
    [B, H, T, D] inputs, [B, T, H, D] output."""
    batch, heads, width, dim = query.shape
    cu = cu_seqlens(bounds, width).to(query.device)
    longest = max(e - s for spans in bounds for s, e in spans)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(batch * width, t.shape[1], dim).to(dtype)

    out = _torch_varlen()(
        *(flat(query), flat(key), flat(value)),
        cu,
        cu,
        longest,
        longest,
        scale=scaling,
        window_size=(-1, 0),  # causal
        enable_gqa=gqa,
    )
    return out.view(batch, width, heads, dim)


def sdpa_varlen_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: causal SDPA per sequence of each (packed) row.

    query [B, H, T, D], key/value [B, H_kv, T, D] -> output [B, T, H, D]. The sequence bounds
    come from `position_ids`; without them the whole row is one causal sequence. A 2-D/4-D
    attention mask cannot reach this function (no mask is built for it): rows must be packed
    or right-padded with positions restarting on the padding, which `collate_rows` does.
    """
    if attention_mask is not None:
        raise ValueError(f"{VARLEN} takes sequence bounds from position_ids, not a mask")
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        raise ValueError(f"{VARLEN} is for training (no KV cache); generate with sdpa")
    batch, heads, width, _ = query.shape
    gqa = key.shape[1] != heads
    p = dropout if module.training else 0.0
    if position_ids is None:
        bounds = [[(0, width)]] * batch
    else:
        bounds = segment_bounds(position_ids.expand(batch, -1))
    half = _flash_dtype(query) if query.is_cuda and p == 0.0 else None
    if half is not None and _torch_varlen() is not None:
        return varlen_flash(query, key, value, bounds, scaling, gqa, half), None
    rows = []
    for b, spans in enumerate(bounds):
        parts = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=p,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            for s, e in spans
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    out = torch.cat(rows, dim=0) if batch > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def register_varlen() -> None:
    """Make `attn_implementation="sdpa_varlen"` loadable (idempotent). It is registered for
    attention only, not for mask creation, so transformers builds no mask for it."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, sdpa_varlen_forward)


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
    elif packed:
        choice, why = VARLEN, "CPU, packed rows: fused SDPA per sequence, no dense mask"
    else:
        choice, why = "sdpa", "CPU"
    if choice == VARLEN:
        register_varlen()
    log.info("attention: %s (%s; packed=%s)", choice, why, packed)
    return choice
