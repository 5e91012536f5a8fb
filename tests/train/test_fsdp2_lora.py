"""LoRA under FSDP2 (`trainer=fsdp model.lora.enabled=true`) across two CPU processes over
gloo: the PeftModel's frozen base weights and trainable adapters are sharded per parameter in
the same decoder layers, the run's losses and gradient norms are one process's accumulating two
micro-batches, its sharded checkpoint resumes, and its HF folder (gathered on rank 0, adapters
merged there by peft) is the one-process LoRA export. DPO with LoRA (the policy with its
adapters off as the reference) trains on two ranks as on one.

The tolerances are tests/train/test_fsdp2.py's, for the same reason: in fp32 sharding only
reorders sums (the reduce-scatter adds the ranks' gradients where one process accumulates
them; the norm adds per-shard sums of squares), which moves a loss by a few 1e-8 relative and
the gradient norm by far less than 1e-3. A base weight that trained, an adapter gradient
dropped, or a reference with its adapters left on moves the losses by orders more.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from matrix.common.io import read_json
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides
from .test_fsdp2 import COMMON, ONE, resumed_from_one_file, train_two_ranks
from .two_ranks import assert_resumes_steps_3_and_4, assert_trains_as_one_process

STEPS = 4
# dropout off: one process and two ranks draw different masks
LORA = ("model.lora.enabled=true", "model.lora.dropout=0.0", "model.lora.r=4")
DPO = ("objective=dpo", "optimizer.lr=3e-3", "trainer.max_steps=2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("fsdp2_lora")
    sft, dpo = data_dir / "sft_short.jsonl", data_dir / "dpo.jsonl"
    run_train(compose_train(tiny_overrides(runs, sft, "one", *COMMON, *ONE, *LORA)))
    sharded = train_two_ranks(runs, sft, "sharded", *LORA)
    run_train(compose_train(tiny_overrides(runs, dpo, "dpo_one", *COMMON, *ONE, *LORA, *DPO)))
    dpo_two = train_two_ranks(runs, dpo, "dpo_two", *LORA, *DPO)
    yield {
        "one": runs / "one" / "train",
        "sharded": sharded,
        "sft": sft,
        "dpo_one": runs / "dpo_one" / "train",
        "dpo_two": dpo_two,
        "cfg": compose_train(tiny_overrides(runs, sft, "x", *ONE)),
    }
    shutil.rmtree(runs, ignore_errors=True)  # each run's checkpoints


@pytest.fixture(scope="module")
def resumed(runs):
    """The sharded run resumed from its step-2 checkpoint (`slow`: a third two-rank run)."""
    step2 = runs["sharded"] / "checkpoints" / "step000002.ckpt"
    root = runs["sharded"].parents[1]
    return train_two_ranks(root, runs["sft"], "resumed", *LORA, f"train.checkpoint.resume={step2}")


def test_two_ranks_train_lora_as_one_process(runs):
    two = assert_trains_as_one_process(runs["one"], runs["sharded"], STEPS)
    assert two[STEPS]["train/loss"] < two[1]["train/loss"]


def test_sharded_checkpoint_holds_the_lora_model(runs):
    """The checkpoint holds what an unsharded LoRA run's does (the whole PeftModel: base and
    adapter weights), each rank a shard; the optimizer's states are the adapters' only."""
    ckpt = runs["sharded"] / "checkpoints" / "step000002.ckpt"
    keys = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    weights = {k for k in keys if k.startswith("state_dict.")}
    adapters = {k for k in weights if ".lora_" in k}
    assert adapters and weights - adapters  # base weights too
    moments = {k for k in keys if k.startswith("optimizer_0.state.") and k.endswith(".exp_avg")}
    assert len(moments) == len(adapters) and all(".lora_" in k for k in moments)
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_sharded_lora_checkpoint_resumes(runs, resumed):
    assert_resumes_steps_3_and_4(runs["sharded"], resumed)


@pytest.mark.slow
def test_one_file_lora_checkpoint_resumes(runs, tmp_path):
    """The gathered file holds the whole PeftModel (base and adapters) and the adapters'
    optimizer states; every rank loads it into its shards."""
    whole, resumed = resumed_from_one_file(tmp_path, runs["sft"], *LORA)
    assert_trains_as_one_process(runs["one"], whole, STEPS)
    assert_resumes_steps_3_and_4(whole, resumed)


def test_export_is_the_merged_one_process_lora_model(runs):
    """Both folders are plain HF models (no peft files or names) with the same weights; the
    adapters were merged into the trained projections, and nothing else moved from the
    seeded initial weights."""
    from transformers import AutoModelForCausalLM

    from matrix.train.models import build_model, load_tokenizer

    one = AutoModelForCausalLM.from_pretrained(runs["one"] / "hf_model")
    two = AutoModelForCausalLM.from_pretrained(runs["sharded"] / "hf_model")
    assert not (runs["sharded"] / "hf_model" / "adapter_config.json").exists()
    for name in ("config.json", "generation_config.json"):
        assert read_json(runs["sharded"] / "hf_model" / name) == read_json(
            runs["one"] / "hf_model" / name
        )
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys() and not [k for k in b if "lora" in k or "base_layer" in k]
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-5, k
    cfg = runs["cfg"]
    init = build_model(cfg.model, load_tokenizer(cfg.model), "sdpa", int(cfg.seed)).state_dict()
    moved = {k for k in b if not torch.equal(b[k], init[k])}
    assert "model.layers.0.self_attn.q_proj.weight" in moved
    assert moved == {k for k in b if k.endswith("proj.weight")}  # LoRA's all-linear targets


def test_dpo_with_lora_reference_on_two_ranks_is_one_process(runs):
    """The reference is the sharded policy with its adapters off: the first loss is log 2
    (adapters start at zero), and every later one is one process's."""
    two = assert_trains_as_one_process(runs["dpo_one"], runs["dpo_two"], 2)
    assert two[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert two[2]["train/loss"] != pytest.approx(math.log(2), abs=1e-4)  # the policy moved


@pytest.mark.usefixtures("one_rank_group")
@pytest.mark.parametrize("tied", [True, False])
def test_gathered_lora_state_merges_as_the_unsharded_model(tied):
    """In process on one rank: the sharded PeftModel's gathered state, merged by
    merged_lora_model, is exactly what peft's merge_and_unload makes of the same model
    unsharded (adapters trained away from zero, so the merge moves every target)."""
    import copy
    from types import SimpleNamespace

    from lightning.pytorch.strategies import ModelParallelStrategy
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.sharded_export import merged_lora_model
    from matrix.train.sharding import decoder_layers, full_state_dict, shard_model

    torch.manual_seed(0)
    shape = {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": tied}
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, **shape)
    config.num_hidden_layers = 2
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(LlamaForCausalLM(config), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    plain = copy.deepcopy(model).merge_and_unload().state_dict()
    fsdp = OmegaConf.create({"activation_checkpointing": False, "sharding_strategy": "FULL_SHARD"})
    shard_model(model, tuple(decoder_layers(model)), fsdp, "32-true", init_device_mesh("cpu", (1,)))
    trainer = SimpleNamespace(strategy=ModelParallelStrategy())
    out = merged_lora_model(model, full_state_dict(trainer, model))
    merged = out.state_dict()
    assert merged.keys() == plain.keys()
    for k in plain:
        assert torch.equal(merged[k], plain[k]), k
    assert (out.lm_head.weight is out.model.embed_tokens.weight) == tied
