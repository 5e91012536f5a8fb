"""Packed rows compute exactly what padded rows compute: same SFT loss, same per-sequence
log-probs, because position ids restart per sequence and no token attends across sequences."""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from matrix.train.batching import collate_rows, pack_best_fit
from matrix.train.examples import tokenize_sft
from matrix.train.lm import forward_logits, sequence_logps
from matrix.train.models import build_model
from matrix.train.sft import sft_loss

from .conftest import compose_train, write_sft


def test_best_fit_places_every_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_best_fit(lengths, 128)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    fill = sum(lengths) / (128 * len(bins))
    assert fill > 0.95  # best-fit decreasing leaves little room unused
    assert pack_best_fit(lengths, 128) == bins  # deterministic


@pytest.fixture(scope="module")
def sequences(tokenizer, tmp_path_factory):
    path = write_sft(tmp_path_factory.mktemp("pack") / "sft.jsonl", 12, seed=3)
    from matrix.common.io import read_jsonl

    seqs, _ = tokenize_sft(tokenizer, read_jsonl(path), max_length=256)
    return seqs


def tiny_model(tokenizer, attn: str):
    cfg = compose_train(["model=tiny_debug"])
    return build_model(cfg.model, tokenizer, attn, seed=0).eval()


@pytest.mark.parametrize("attn", ["sdpa", "sdpa_varlen", "eager"])
def test_packed_equals_padded(tokenizer, sequences, attn):
    model = tiny_model(tokenizer, attn)
    pad = tokenizer.pad_token_id
    padded = collate_rows([[s] for s in sequences], packed=False, pad_id=pad)
    # two packed units of unequal length: the batch puts them end to end in one row
    packed = collate_rows([sequences[:7], sequences[7:]], packed=True, pad_id=pad)
    assert "attention_mask" not in packed
    assert packed["padded_tokens"] < padded["padded_tokens"]
    with torch.no_grad():
        lp, lq = forward_logits(model, padded), forward_logits(model, packed)
        loss_padded, n_padded = sft_loss(lp, padded["labels"])
        loss_packed, n_packed = sft_loss(lq, packed["labels"])
        seq_padded = sequence_logps(lp, padded["labels"], padded["seq_ids"], len(sequences))
        seq_packed = sequence_logps(lq, packed["labels"], packed["seq_ids"], len(sequences))
    assert n_padded == n_packed > 0
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seq_packed, seq_padded, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "sdpa_varlen"])
def test_a_packed_batch_is_one_row_without_padding_and_trains_on_the_padded_loss(
    tokenizer, sequences, attn
):
    """Padding-free packing: the batch's units go end to end into one row (no pad token, no
    mask), and the training loss and its gradients equal the padded batch's."""
    from matrix.train.sft import batch_loss

    model = tiny_model(tokenizer, attn)
    pad = tokenizer.pad_token_id
    units = [sequences[:5], sequences[5:9], sequences[9:]]
    packed = collate_rows(units, packed=True, pad_id=pad)
    total = sum(len(s) for s in sequences)
    assert packed["input_ids"].shape == (1, total)
    assert packed["real_tokens"] == packed["padded_tokens"] == total
    assert bool((packed["seq_ids"] >= 0).all())  # every position belongs to a sequence
    assert torch.equal(packed["seq_ids"][0].unique_consecutive(), torch.arange(len(sequences)))
    assert int((packed["position_ids"] == 0).sum()) == packed["n_sequences"] == len(sequences)
    padded = collate_rows([[s] for s in sequences], packed=False, pad_id=pad)
    assert padded["real_tokens"] == total < padded["padded_tokens"]  # the control pads

    def loss_and_grads(batch):
        model.zero_grad()
        loss, n = batch_loss(model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach(), n, grads

    loss_padded, n_padded, g_padded = loss_and_grads(padded)
    loss_packed, n_packed, g_packed = loss_and_grads(packed)
    assert n_padded == n_packed > 0
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_packed, g_padded, rtol=1e-4, atol=1e-6)


def test_without_restarting_positions_sequences_would_leak(tokenizer, sequences):
    """The control: the same packed row with positions running on is treated as one long
    sequence (later sequences attend to earlier ones), and the loss changes."""
    model = tiny_model(tokenizer, "sdpa")
    pad = tokenizer.pad_token_id
    packed = collate_rows([sequences[:7], sequences[7:]], packed=True, pad_id=pad)
    leaky = dict(packed)
    width = packed["input_ids"].shape[1]
    leaky["position_ids"] = torch.arange(width).expand_as(packed["position_ids"])
    with torch.no_grad():
        good, _ = sft_loss(forward_logits(model, packed), packed["labels"])
        bad, _ = sft_loss(forward_logits(model, leaky), packed["labels"])
    assert not torch.allclose(good, bad, rtol=1e-4, atol=1e-4)


def test_packed_batches_in_the_datamodule_cover_the_data(tokenizer, data_dir):
    from matrix.train.datamodule import ChatDataModule

    cfg = compose_train(["model=tiny_debug", f"data.path={data_dir / 'sft.jsonl'}"])
    cfg = OmegaConf.merge(cfg, {"data": {"max_seq_len": 256, "batch_size": 2}})
    dm = ChatDataModule.from_config(cfg, tokenizer)
    dm.setup()
    seen = []
    for batch in dm.train_dataloader():
        seen += batch["example_index"].tolist()
        assert batch["input_ids"].shape == (1, batch["real_tokens"])  # one row, no padding
        # a packed row's positions restart at each sequence start
        starts = (batch["position_ids"] == 0) & (batch["seq_ids"] >= 0)
        assert int(starts.sum()) == batch["n_sequences"]
    assert sorted(seen) == list(range(len(dm)))


def test_accumulated_micro_batches_weigh_every_token_the_same(tokenizer, sequences):
    """Two micro-batches with different token counts, accumulated the way Lightning does it
    (each step's loss / 2), give the gradient of one batch holding all their tokens."""
    from matrix.train.sft import SFTModule

    model = tiny_model(tokenizer, "sdpa")
    pad = tokenizer.pad_token_id
    small, large = sequences[:2], sequences[2:]
    whole = collate_rows([[s] for s in sequences], packed=False, pad_id=pad)
    parts = [collate_rows([[s] for s in part], packed=False, pad_id=pad) for part in (small, large)]

    def grads(batches, tokens_per_batch):
        module = SFTModule(model, None, None, 1, tokens_per_batch=tokens_per_batch)
        model.zero_grad()
        for b in batches:
            (module.training_step(b, 0) / len(batches)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    reference = grads([whole], None)
    n = [sum(1 for x in s.labels[1:] if x != -100) for s in sequences]
    assert sum(n[:2]) != sum(n[2:])  # the micro-batches really differ in size
    weighted = grads(parts, tokens_per_batch=sum(n) / 2)
    per_batch_mean = grads(parts, None)
    torch.testing.assert_close(weighted, reference, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(per_batch_mean, reference, rtol=1e-3, atol=1e-5)


def test_varlen_offsets_lay_the_rows_sequences_end_to_end():
    """The offsets PyTorch's varlen FlashAttention kernel gets on CUDA (sdpa_varlen): every
    sequence of every row, rows laid end to end, right padding one more sequence."""
    from matrix.train.attention import cu_seqlens, segment_bounds

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    bounds = segment_bounds(positions)
    assert bounds == [[(0, 3), (3, 5), (5, 9)], [(0, 6), (6, 9)]]
    cu = cu_seqlens(bounds, 9)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 5, 9, 15, 18]
