"""FSDP2 (`trainer=fsdp`, matrix.train.sharding) across two CPU processes over gloo: the tiny
2-layer Llama trains with its parameters, gradients and optimizer states sharded, and its
losses, gradient norms and final weights are one process's (same global batch, same seed), its
sharded checkpoint resumes, and its HF export reloads.

What equal means here: one process accumulating two micro-batches and two ranks with one
micro-batch each compute the same gradient (each micro-batch's loss weighed by its tokens over
the same constant, the two summed and halved; halving is exact in binary floating point), so
sharding changes only the order of floating-point sums: the gradient reduce-scatter adds the
ranks' gradients where one process accumulates them, and the norm adds per-shard sums of
squares. In fp32 a reordered sum of n terms moves by about sqrt(n) x 6e-8 relative: the losses
(identical at step 1, then a few 1e-8 apart) get rel 1e-5, the gradient norm (a sum over 3.2M
squares: about 1e-4) rel 1e-3, the weights 1e-5 absolute. A sharding fault is far outside
them: a rank's gradient dropped or double-counted moves the norm by tens of percent, and the
next loss by a visible part of the ~1e-2 each step moves it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf

from matrix.common.validation import ConfigProblems
from matrix.train.resume import checkpoint_step, newest_checkpoint, resume_point
from matrix.train.run import run_train
from matrix.train.sharding import FSDP2Strategy, build_strategy, check_strategy

from . import two_ranks
from .conftest import compose_train, tiny_overrides
from .two_ranks import TWO, assert_resumes_steps_3_and_4, assert_trains_as_one_process

# 24 rows / 2 a micro-batch: one process accumulates 2 micro-batches a step, two ranks one each
STEPS = 4
COMMON = (
    "data.packing=false",
    "data.batch_size=2",
    f"trainer.max_steps={STEPS}",
    "train.checkpoint.every_n_steps=2",
    "train.checkpoint.keep=-1",
)
ONE = ("trainer=cpu", "trainer.accumulate_grad_batches=2")


def train_two_ranks(runs: Path, data: Path, name: str, *extra: str) -> Path:
    return two_ranks.train_two_ranks(runs, data, name, *COMMON, *extra)[0]


def resumed_from_one_file(runs: Path, data: Path, *extra: str) -> tuple[Path, Path]:
    """A two-rank run with one-file checkpoints (`trainer.fsdp.state_dict_type=full`: the
    model and optimizer gathered on rank 0 into one file, which every rank loads into its
    shards), and a second run resumed from its step-2 file."""
    one_file = ("trainer.fsdp.state_dict_type=full", *extra)
    whole = train_two_ranks(runs, data, "one_file", *one_file)
    step2 = whole / "checkpoints" / "step000002.ckpt"
    assert step2.is_file()  # not a folder of per-rank shards
    resume = f"train.checkpoint.resume={step2}"
    return whole, train_two_ranks(runs, data, "one_file_resumed", *one_file, resume)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("fsdp2")
    data = data_dir / "sft_short.jsonl"
    run_train(compose_train(tiny_overrides(runs, data, "one", *COMMON, *ONE)))
    sharded = train_two_ranks(runs, data, "sharded")
    step2 = sharded / "checkpoints" / "step000002.ckpt"
    resumed = train_two_ranks(runs, data, "resumed", f"train.checkpoint.resume={step2}")
    return {"one": runs / "one" / "train", "sharded": sharded, "resumed": resumed}


def test_two_ranks_train_as_one_process(runs):
    two = assert_trains_as_one_process(runs["one"], runs["sharded"], STEPS)
    assert two[STEPS]["train/loss"] < two[1]["train/loss"]


def test_checkpoint_is_sharded_across_the_ranks(runs):
    ckpt = runs["sharded"] / "checkpoints" / f"step{STEPS:06d}.ckpt"
    assert ckpt.is_dir() and checkpoint_step(ckpt) == STEPS
    assert newest_checkpoint(ckpt.parent).resolve() == ckpt.resolve()
    shards = sorted(ckpt.glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"]
    # weights, gradients' optimizer states: each rank holds about half (a replicated model
    # would be written whole by rank 0, its duplicates left out of rank 1's file)
    sizes = [p.stat().st_size for p in shards]
    assert all(0.4 < s / sum(sizes) < 0.6 for s in sizes), sizes


def test_sharded_checkpoint_resumes_the_run(runs):
    assert_resumes_steps_3_and_4(runs["sharded"], runs["resumed"])


@pytest.mark.slow
def test_one_file_checkpoint_resumes_the_run(runs, tmp_path, data_dir):
    whole, resumed = resumed_from_one_file(tmp_path, data_dir / "sft_short.jsonl")
    assert_trains_as_one_process(runs["one"], whole, STEPS)
    assert_resumes_steps_3_and_4(whole, resumed)


def test_export_reloads_with_one_process_weights(runs):
    from transformers import AutoModelForCausalLM

    one = AutoModelForCausalLM.from_pretrained(runs["one"] / "hf_model")
    two = AutoModelForCausalLM.from_pretrained(runs["sharded"] / "hf_model")
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), k
    ids = torch.tensor([[1, 504, 2583, 17, 421, 3079, 30, 198, 2]])
    with torch.no_grad():
        assert torch.allclose(one(ids).logits, two(ids).logits, rtol=0, atol=1e-4)


def test_fsdp_presets_compose(tmp_path, data_dir):
    data = data_dir / "sft_short.jsonl"
    cfg = compose_train(tiny_overrides(tmp_path, data, "x", *TWO))
    assert cfg.trainer.strategy == "fsdp2" and cfg.trainer.fsdp.activation_checkpointing
    from matrix.train.models import build_model, load_tokenizer

    model = build_model(cfg.model, load_tokenizer(cfg.model), "sdpa", 0)
    strategy = build_strategy(cfg, model)
    assert isinstance(strategy, FSDP2Strategy)
    assert [c.__name__ for c in strategy.layers] == ["LlamaDecoderLayer"]
    assert strategy._tensor_parallel_size == 1 and strategy._save_distributed_checkpoint
    old = compose_train(tiny_overrides(tmp_path, data, "x", "trainer=fsdp1"))
    assert old.trainer.strategy == "fsdp" and old.trainer.accelerator == "gpu"
    assert type(build_strategy(old, model)) is FSDPStrategy


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.fsdp.sharding_strategy=NO_SHARD", "trainer.fsdp.sharding_strategy"),
        ("trainer.fsdp.cpu_offload=true", "trainer.fsdp.cpu_offload"),
        (
            "model.lora.enabled=true model.lora.quantize_4bit=true",
            "model.lora.quantize_4bit",
        ),
        ("trainer.strategy=fsdp3", "trainer.strategy"),
    ],
)
def test_fsdp2_refuses_what_it_cannot_do(tmp_path, data_dir, override, key):
    cfg = compose_train(
        tiny_overrides(tmp_path, data_dir / "sft.jsonl", "x", *TWO, *override.split())
    )
    p = ConfigProblems()
    check_strategy(cfg, p)
    assert [k for k, _ in p.items] == [key]
    if key == "trainer.strategy":
        assert "trainer=fsdp1" in p.items[0][1]  # the message names the fix
        return
    fsdp1 = OmegaConf.merge(cfg, {"trainer": {"strategy": "fsdp"}})
    p = ConfigProblems()
    check_strategy(fsdp1, p)
    assert p.items == []  # the FSDP1 wrapper takes them


def test_incomplete_sharded_checkpoint_is_not_resumed(tmp_path):
    """A folder is a checkpoint once rank 0 wrote its meta.pt, after every rank's shard."""
    done, partial = tmp_path / "step000002.ckpt", tmp_path / "step000004.ckpt"
    done.mkdir()
    partial.mkdir()
    torch.save({"global_step": 2}, done / "meta.pt")
    (partial / "__0_0.distcp").write_bytes(b"")
    assert newest_checkpoint(tmp_path) == done
    assert checkpoint_step(done) == 2
    fresh = OmegaConf.create({"train": {"checkpoint": {"resume": None}}})
    assert resume_point(fresh, tmp_path, "hash").fresh
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # folders removed too


def test_shard_model_checkpoints_layers_and_routes_the_loss(one_rank_group):
    """shard_model on one rank: every parameter a DTensor, each decoder layer recomputed in
    the backward (activation checkpointing), and the training loss, which calls the decoder
    and the head directly, gathers the root's shards and equals the unsharded model's."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.loss import labelled_logps
    from matrix.train.sharding import decoder_layers, shard_model, tied_copies

    torch.manual_seed(0)
    shape = {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, **shape)
    config.num_hidden_layers = 2
    model = LlamaForCausalLM(config).train()
    plain = copy.deepcopy(model)
    calls = []
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    fsdp = OmegaConf.create({"activation_checkpointing": True, "sharding_strategy": "FULL_SHARD"})
    mesh = init_device_mesh("cpu", (1,))
    shard_model(model, tuple(decoder_layers(model)), fsdp, "32-true", mesh)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert tied_copies(model) == {"lm_head.weight"}
    ids = torch.randint(0, 100, (2, 8))
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(8).expand(2, 8)}
    sharded = labelled_logps(model, batch).logps
    sharded.sum().backward()
    assert len(calls) == 2  # the forward, and its recompute in the backward
    assert torch.equal(sharded.detach(), labelled_logps(plain, batch).logps.detach())
