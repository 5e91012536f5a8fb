"""The FLOP count behind MFU equals Lightning's measure_flops (torch's FlopCounterMode) on a
tiny Llama: tied output head, full fine-tuning and LoRA, and a DPO step's reference pass.
Eager attention, so the attention matmuls are counted by FlopCounterMode too (it has no
formula for PyTorch's CPU SDPA kernel)."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.throughput import measure_flops
from transformers import LlamaConfig, LlamaForCausalLM

from matrix.train.throughput import (
    attention_context,
    attention_flops_per_token,
    base_linear_flops_per_token,
    training_flops_per_token,
)

T = 24


def tiny(lora: bool = False, tied: bool = True):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
        )
    return model


def step(model, x):
    return lambda: model(input_ids=x, use_cache=False).logits


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("lora", [False, True])
def test_training_flops_match_lightning(lora, tied):
    model = tiny(lora, tied)
    x = torch.randint(0, 512, (1, T))
    measured = measure_flops(model, step(model, x), lambda y: y.sum())
    assert training_flops_per_token(model, context=T) * T == measured


def test_the_old_parameter_count_missed_the_tied_head_and_lora_counts_less():
    full, lora = tiny(), tiny(lora=True)
    x = torch.randint(0, 512, (1, T))
    measured = measure_flops(full, step(full, x), lambda y: y.sum())
    params = sum(p.numel() for n, p in full.named_parameters() if "embed_tokens" not in n)
    old = (6 * params + 12 * 3 * 64 * T) * T  # 6N + 12 x layers x hidden x context
    assert measured - old > 0.9 * 6 * 512 * 64 * T  # about the tied head's 6 x vocab x hidden
    assert training_flops_per_token(lora, T) < training_flops_per_token(full, T)


def test_dpo_reference_pass_matches_lightning():
    """A DPO step with a LoRA policy: the policy's forward + backward, plus the same model
    with adapters off, forward only."""
    model = tiny(lora=True)
    x = torch.randint(0, 512, (1, T))
    policy = measure_flops(model, step(model, x), lambda y: y.sum())
    with model.disable_adapter(), torch.no_grad():
        reference = measure_flops(model, step(model, x))
    assert (
        reference
        == base_linear_flops_per_token(model) * T + attention_flops_per_token(model, T, False) * T
    )
    assert training_flops_per_token(model, T, reference_pass=True) * T == policy + reference


def test_attention_context_weighs_each_sequence_by_its_length():
    seq_ids = torch.tensor([[0, 0, 0, 1, -1], [2, 2, 2, 2, -1]])
    assert attention_context(seq_ids) == pytest.approx((9 + 1 + 16) / 8)
    assert attention_context(torch.full((1, 3), -1)) == 0.0
