"""Per-token log-probs of the labels from the model's hidden states, a slice of tokens at a time.

The plain way (`model(...).logits`, upcast to fp32, shift, cross-entropy) holds the whole
`[tokens x vocabulary]` logits several times over: the head's output, its fp32 copy, the
shifted copy, the log-softmax saved for the backward pass, and its gradient. That is 0.8 GB
per copy for 8 x 1024 tokens at SmolLM2's 49K vocabulary, 2 GB per 4K tokens at a 128K one.

Here the decoder runs without its output head; only the hidden states of positions that carry
a label are kept (prompt tokens cost nothing in the head), and the head + fp32 log-softmax run
on `chunk` of them at a time inside `torch.utils.checkpoint`, so the forward pass keeps no
logits at all and the backward pass recomputes one slice's logits at a time. The result equals
the full-logits computation (same head module, same fp32 upcast before the softmax) up to
float summation order; tests/train/test_loss.py holds the two side by side.

`model.cross_entropy=fused` runs the head and the cross-entropy as PyTorch's own fused op
instead (`torch.nn.functional.linear_cross_entropy` with `LinearCrossEntropyOptions`, torch
2.10+: chunked inside one autograd function), on the same fp32 inputs as the chunked path.
SFT asks it for the summed loss, for which it computes the gradients during the forward pass
(no slice is recomputed in the backward); DPO needs per-token log-probs (`reduction="none"`),
whose backward recomputes the slices as the chunked path does. Where torch lacks the op, the
chunked path runs and says why in one log line. liger-kernel and cut-cross-entropy would need
Triton and a CUDA device and add a package; the pinned torch carries its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from matrix.train.tokenize import IGNORE_INDEX

log = logging.getLogger(__name__)

CROSS_ENTROPY = ("chunked", "fused")
# the head module's attribute holding model.cross_entropy (a plain attribute: copied with the
# DPO reference, never saved in a checkpoint or an export)
_KIND = "matrix_cross_entropy"

# fp32 logits elements per slice: 16M = 64 MB (341 tokens at a 49K vocabulary, 128 at 128K);
# the backward pass holds about four such buffers at once
CHUNK_ELEMENTS = 1 << 24

# Config fields that change logits after the head (softcapping, scaling): a model that sets
# one takes the full-logits path, which the model's own forward computes correctly.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logits_scaling", "logit_scale")


@dataclass
class LabelledLogps:
    """`logps[i]`: log p(label | prefix) (fp32) of the i-th labelled target position, in row
    order; `mask`: [rows, T-1], True where a target is labelled (so `mask.sum() == len(logps)`)."""

    logps: torch.Tensor
    mask: torch.Tensor


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_hidden_path(model: torch.nn.Module) -> bool:
    """Whether logits are exactly `output_embeddings(decoder(...))` for this model."""
    inner = _unwrapped(model)
    config = getattr(inner, "config", None)
    if config is None or inner.get_output_embeddings() is None:
        return False
    if getattr(inner, "base_model", inner) is inner:
        return False
    return not any(getattr(config, k, None) not in (None, 1, 1.0) for k in _HEAD_TRANSFORMS)


def forward_hidden(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Last hidden states [rows, T, hidden] from the decoder, without the output head."""
    inner = _unwrapped(model)
    out = inner.base_model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return out.last_hidden_state


def _slice_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def chunked_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """log_softmax(head(hidden).float())[i, targets[i]] for every row i of hidden [N, H],
    `chunk` rows at a time (default: CHUNK_ELEMENTS / vocabulary), each slice checkpointed
    when gradients are on. Returns [N] float32."""
    if chunk is None:
        vocab = head.weight.shape[0] if hasattr(head, "weight") else head.out_features
        chunk = max(1, CHUNK_ELEMENTS // int(vocab))
    if chunk <= 0:
        raise ValueError(f"chunk={chunk}; use a positive number of tokens per slice")
    grad = torch.is_grad_enabled()
    parts = []
    for s in range(0, hidden.size(0), chunk):
        h, t = hidden[s : s + chunk], targets[s : s + chunk]
        if grad:
            parts.append(checkpoint(_slice_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_slice_logps(head, h, t))
    if not parts:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# A model sharded with FSDP2 (matrix.train.sharding) computes `labelled_logps` through this
# method of its root, which gathers the root's shards (embeddings, final norm, head) around it.
SHARDED_LOGPS = "sharded_labelled_logps"


def fused_available() -> str | None:
    """None when torch has the fused linear cross-entropy, else why not."""
    if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return f"torch {torch.__version__} has no torch.nn.functional.linear_cross_entropy"
    return None


def set_cross_entropy(model: torch.nn.Module, kind: str) -> str:
    """Record `model.cross_entropy` on the model's output head (read by `labelled_logps`);
    returns the kind that will run: `fused` falls back to `chunked` where torch lacks it."""
    if kind not in CROSS_ENTROPY:
        raise ValueError(f"model.cross_entropy={kind!r}; choose one of {CROSS_ENTROPY}")
    head = _unwrapped(model).get_output_embeddings()
    why = fused_available() if kind == "fused" else None
    if why is not None:
        log.warning("model.cross_entropy=fused: %s; the chunked loss runs instead", why)
        kind = "chunked"
    if head is not None:
        setattr(head, _KIND, kind)
    return kind


def fused_nll(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, reduction: str
) -> torch.Tensor:
    """-log_softmax(head(hidden).float())[i, targets[i]] as one fused op, per row of hidden
    (`reduction="none"`, [N]) or summed ("sum"), float32. `acc_policy="accurate"` keeps the
    softmax's sums in fp32."""
    from torch.nn import LinearCrossEntropyOptions

    weight = head.weight
    bias = getattr(head, "bias", None)
    if hidden.dtype != weight.dtype:  # one dtype for the op (a bf16 hidden under autocast)
        hidden = hidden.to(weight.dtype)
    # CUDA: torch's own slice size, tuned per GPU and dtype. CPU: the chunked path's slice
    # size; torch's automatic one is 100x slower there (300 tokens x 49K vocabulary: 140 s)
    if hidden.is_cuda:
        options = LinearCrossEntropyOptions(acc_policy="accurate")
    else:
        chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
        options = LinearCrossEntropyOptions(
            acc_policy="accurate", chunking_method=None, batch_chunk_size=chunk
        )
    nll = F.linear_cross_entropy(
        hidden, weight, targets, linear_bias=bias, reduction=reduction, options=options
    )
    return nll.float()


def _labelled_hidden(model: torch.nn.Module, batch: dict):
    """Hidden states [N, H] of the labelled positions, their targets [N], and the mask."""
    labels = batch["labels"]
    mask = labels[:, 1:] != IGNORE_INDEX
    hidden = forward_hidden(model, batch)[:, :-1][mask]
    return hidden, labels[:, 1:][mask], mask


def _fused_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output head when `model.cross_entropy=fused` applies to it: fp32 weights only, as
    the fused op returns its inputs' dtype and bf16 log-probs lose what DPO's sums depend on
    (a bf16 model or DPO reference copy takes the chunked path)."""
    if not supports_hidden_path(model):
        return None
    head = _unwrapped(model).get_output_embeddings()
    fused = getattr(head, _KIND, "chunked") == "fused" and head.weight.dtype == torch.float32
    return head if fused else None


def fused_nll_sum(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int] | None:
    """Summed negative log-likelihood of the labelled targets and their count through the
    fused op's scalar path (SFT's loss), or None when the model does not use the fused op or
    is sharded with FSDP2 (its root's shards are gathered only around `labelled_logps`)."""
    if getattr(model, SHARDED_LOGPS, None) is not None:
        return None
    head = _fused_head(model)
    if head is None:
        return None
    hidden, targets, _ = _labelled_hidden(model, batch)
    return fused_nll(head, hidden, targets, "sum"), len(targets)


def labelled_logps(model: torch.nn.Module, batch: dict, chunk: int | None = None) -> LabelledLogps:
    """Log-probs of every labelled target of a padded or packed batch (next-token: position
    t predicts labels[t + 1]), with no `[tokens x vocabulary]` tensor alive at once; models
    whose logits are not plain `head(hidden)` take the full-logits path instead."""
    sharded = getattr(model, SHARDED_LOGPS, None)
    if sharded is not None:
        return LabelledLogps(*sharded(batch, chunk))
    return model_labelled_logps(model, batch, chunk)


def model_labelled_logps(model: torch.nn.Module, batch: dict, chunk: int | None = None):
    """`labelled_logps` computed on the model as it is (no FSDP2 routing)."""
    labels = batch["labels"]
    mask = labels[:, 1:] != IGNORE_INDEX
    if not supports_hidden_path(model):
        from matrix.train.lm import forward_logits, token_logps

        logp, m = token_logps(forward_logits(model, batch), labels)
        return LabelledLogps(logp[m], m)
    hidden, targets, mask = _labelled_hidden(model, batch)  # labelled positions only
    fused = _fused_head(model) if chunk is None else None
    if fused is not None:
        return LabelledLogps(-fused_nll(fused, hidden, targets, "none"), mask)
    head = _unwrapped(model).get_output_embeddings()
    return LabelledLogps(chunked_logps(head, hidden, targets, chunk), mask)
