"""The chunked loss (hidden states -> head -> fp32 log-softmax, a slice of tokens at a time)
equals the full-logits loss: SFT loss and gradients, DPO per-sequence log-probs and their
gradients, padded and packed, full fine-tuning and LoRA; and it never holds a
[tokens x vocabulary] float tensor."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from matrix.common.io import read_jsonl
from matrix.train.batching import collate_rows
from matrix.train.dpo import batch_sequence_logps
from matrix.train.examples import tokenize_sft
from matrix.train.lm import forward_logits, sequence_logps
from matrix.train.loss import chunked_logps, fused_available, labelled_logps, set_cross_entropy
from matrix.train.models import build_model
from matrix.train.sft import batch_loss, sft_loss

from .conftest import compose_train, write_sft

# fp32 throughout; the two paths differ only in summation order (the chunk's matmul and the
# final sum), so they agree to a few ulps of the loss; 1e-5 relative is far below any
# difference a wrong mask, shift or target would make (those change the loss at 1e-2).
RTOL, ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def sequences(tokenizer, tmp_path_factory):
    path = write_sft(tmp_path_factory.mktemp("loss") / "sft.jsonl", 10, seed=5)
    seqs, _ = tokenize_sft(tokenizer, read_jsonl(path), max_length=256)
    return seqs


def model_for(tokenizer, attn: str = "sdpa", lora: bool = False):
    overrides = ["model=tiny_debug"]
    if lora:
        overrides += ["model.lora.enabled=true", "model.lora.dropout=0.0"]
    cfg = compose_train(overrides)
    return build_model(cfg.model, tokenizer, attn, seed=0).train()


def batches(tokenizer, sequences) -> dict[str, dict]:
    pad = tokenizer.pad_token_id
    return {
        "padded": collate_rows([[s] for s in sequences], packed=False, pad_id=pad),
        "packed": collate_rows([sequences[:6], sequences[6:]], packed=True, pad_id=pad),
    }


def grads_of(model, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None]
    )


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_sft_loss_and_grads_equal_full_logits(tokenizer, sequences, layout, lora):
    model = model_for(tokenizer, lora=lora)
    batch = batches(tokenizer, sequences)[layout]
    full, n_full = sft_loss(forward_logits(model, batch), batch["labels"])
    g_full = grads_of(model, full)
    chunked, n = batch_loss(model, batch)
    g_chunked = grads_of(model, chunked)
    assert n == n_full > 0
    torch.testing.assert_close(chunked, full, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(g_chunked, g_full, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert g_full.abs().sum() > 0


@pytest.mark.parametrize("chunk", [1, 7, 100_000])
def test_every_slice_size_gives_the_same_log_probs(tokenizer, sequences, chunk):
    model = model_for(tokenizer)
    batch = batches(tokenizer, sequences)["packed"]
    reference = labelled_logps(model, batch, chunk=100_000).logps.detach()
    got = labelled_logps(model, batch, chunk=chunk)
    torch.testing.assert_close(got.logps.detach(), reference, rtol=RTOL, atol=ATOL)
    assert int(got.mask.sum()) == len(got.logps)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_chunked_dpo_sequence_logps_and_grads_equal_full_logits(tokenizer, sequences, layout):
    model = model_for(tokenizer)
    batch = batches(tokenizer, sequences)[layout]
    k = batch["n_sequences"]
    full = sequence_logps(forward_logits(model, batch), batch["labels"], batch["seq_ids"], k)
    weights = torch.linspace(-1.0, 1.0, k)  # a loss that weighs sequences differently, like DPO
    g_full = grads_of(model, (full * weights).sum())
    chunked = batch_sequence_logps(model, batch)
    g_chunked = grads_of(model, (chunked * weights).sum())
    assert chunked.shape == (k,) and bool((chunked < 0).all())
    torch.testing.assert_close(chunked, full, rtol=RTOL, atol=1e-4)
    torch.testing.assert_close(g_chunked, g_full, rtol=GRAD_RTOL, atol=GRAD_ATOL)


class LargestFloatTensor(TorchDispatchMode):
    """Records the largest floating-point tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_all_tokens_by_the_vocabulary_is_ever_made(tokenizer, sequences):
    model = model_for(tokenizer)
    batch = batches(tokenizer, sequences)["packed"]
    vocab = model.get_output_embeddings().weight.shape[0]
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    chunk = 16
    assert n_labelled > 4 * chunk
    with LargestFloatTensor() as seen:
        loss = -labelled_logps(model, batch, chunk=chunk).logps.sum()
        loss.backward()
    # the tied head's weight gradient is [vocab x hidden]; nothing may reach n_labelled x vocab
    assert seen.largest <= max(chunk * vocab, vocab * model.config.hidden_size)
    with LargestFloatTensor() as full:
        sft_loss(forward_logits(model, batch), batch["labels"])[0].backward()
    assert full.largest >= n_labelled * vocab  # the control: the full path does make one


def test_chunked_logps_rejects_a_bad_slice_size():
    head = torch.nn.Linear(4, 10, bias=False)
    with pytest.raises(ValueError, match="chunk"):
        chunked_logps(head, torch.randn(3, 4), torch.tensor([1, 2, 3]), chunk=0)


def fused_model(tokenizer, lora: bool = False):
    overrides = ["model=tiny_debug", "model.cross_entropy=fused"]
    if lora:
        overrides += ["model.lora.enabled=true", "model.lora.dropout=0.0"]
    return build_model(compose_train(overrides).model, tokenizer, "sdpa", seed=0).train()


@pytest.mark.parametrize(("layout", "lora"), [("packed", False), ("padded", True)])
def test_fused_cross_entropy_equals_the_chunked_loss_and_grads(tokenizer, sequences, layout, lora):
    """model.cross_entropy=fused (torch's fused linear cross-entropy) against the chunked
    loss on the same weights: SFT loss and gradients, DPO sequence log-probs and gradients,
    to the same fp32 summation-order tolerance as chunked vs full logits (twice its absolute
    part for gradients: each path is that far from the exact value, in its own order)."""
    assert fused_available() is None, "the pinned torch has linear_cross_entropy"
    fused, chunked = fused_model(tokenizer, lora), model_for(tokenizer, lora=lora)
    assert getattr(fused.get_output_embeddings(), "matrix_cross_entropy", None) == "fused"
    batch = batches(tokenizer, sequences)[layout]
    want, n = batch_loss(chunked, batch)
    got, m = batch_loss(fused, batch)
    assert n == m > 0
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        grads_of(fused, got), grads_of(chunked, want), rtol=GRAD_RTOL, atol=2 * GRAD_ATOL
    )
    weights = torch.linspace(-1.0, 1.0, batch["n_sequences"])
    seq_want, seq_got = batch_sequence_logps(chunked, batch), batch_sequence_logps(fused, batch)
    torch.testing.assert_close(seq_got, seq_want, rtol=RTOL, atol=1e-4)
    torch.testing.assert_close(
        grads_of(fused, (seq_got * weights).sum()),
        grads_of(chunked, (seq_want * weights).sum()),
        rtol=GRAD_RTOL,
        atol=2 * GRAD_ATOL,
    )


def test_fused_cross_entropy_falls_back_with_the_reason(tokenizer, monkeypatch, caplog):
    """A torch without linear_cross_entropy: the chunked loss runs, and one log line says why."""
    monkeypatch.delattr(torch.nn.functional, "linear_cross_entropy")
    with caplog.at_level("WARNING", logger="matrix.train.loss"):
        model = fused_model(tokenizer)
    assert model.get_output_embeddings().matrix_cross_entropy == "chunked"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "matrix.train.loss"]
    assert "no torch.nn.functional.linear_cross_entropy" in line and "chunked" in line


def test_an_unknown_cross_entropy_is_refused():
    with pytest.raises(ValueError, match="model.cross_entropy"):
        set_cross_entropy(torch.nn.Linear(2, 2), "liger")
