"""DPO under FSDP2 (`trainer=fsdp`) across two CPU processes over gloo: the frozen reference
copy is sharded like the policy (each rank holds half of it), the run's losses and gradient
norms are one process's accumulating two micro-batches, its sharded checkpoints hold the
policy only and resume, and `reference=precomputed` (the sharded policy's log-probs before the
first step) trains as the frozen copy does.

The tolerances are tests/train/test_fsdp2.py's, for the same reason: in fp32 sharding only
reorders sums (the reduce-scatter adds the ranks' gradients where one process accumulates
them; the norm adds per-shard sums of squares), which moves a loss by a few 1e-8 relative and
the gradient norm by about 1e-4. A reference computed from a wrong or partial model moves the
DPO loss off log 2 at the first step and every later loss by far more.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from torch.distributed.checkpoint import FileSystemReader

from matrix.train.run import run_train

from . import two_ranks
from .conftest import compose_train, tiny_overrides
from .two_ranks import TWO, assert_resumes_steps_3_and_4, assert_trains_as_one_process, metrics

STEPS = 4
# 32 pairs less the validation split, 2 pairs a micro-batch: one process accumulates 2 a step
COMMON = (
    "objective=dpo",
    "data.packing=false",
    "data.batch_size=2",
    f"trainer.max_steps={STEPS}",
    "optimizer.lr=3e-3",
    "train.checkpoint.every_n_steps=2",
    "train.checkpoint.keep=-1",
)
ONE = ("trainer=cpu", "trainer.accumulate_grad_batches=2")
SHARDED_LINE = re.compile(r"reference copy sharded, rank (\d) holds (\d+) of its (\d+) parameters")


def train_two_ranks(runs: Path, data: Path, name: str, *extra: str) -> tuple[Path, str]:
    return two_ranks.train_two_ranks(runs, data, name, *COMMON, *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("fsdp2_dpo")
    data = data_dir / "dpo.jsonl"
    run_train(compose_train(tiny_overrides(runs, data, "one", *COMMON, *ONE)))
    sharded, log = train_two_ranks(runs, data, "sharded")
    return {"one": runs / "one" / "train", "sharded": sharded, "log": log, "data": data}


@pytest.fixture(scope="module")
def later_runs(runs):
    """Two more two-rank runs (`slow`: about 20 s each, mostly the ranks' start-up): resumed
    from the sharded run's step-2 checkpoint, and with the precomputed reference."""
    root, data = runs["sharded"].parents[1], runs["data"]
    step2 = runs["sharded"] / "checkpoints" / "step000002.ckpt"
    resumed, _ = train_two_ranks(root, data, "resumed", f"train.checkpoint.resume={step2}")
    pre, pre_log = train_two_ranks(
        root, data, "precomputed", "train.objective.reference=precomputed"
    )
    return {"resumed": resumed, "precomputed": pre, "precomputed_log": pre_log}


def test_two_ranks_train_dpo_as_one_process(runs):
    two = assert_trains_as_one_process(runs["one"], runs["sharded"], STEPS)
    assert two[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert two[STEPS]["train/loss"] < two[1]["train/loss"]


def test_reference_copy_is_sharded_on_each_rank(runs):
    """Each rank's log line counts the reference's parameters it holds (DTensor local shards)."""
    held = {int(r): (int(n), int(total)) for r, n, total in SHARDED_LINE.findall(runs["log"])}
    assert sorted(held) == [0, 1], runs["log"][-2000:]
    (n0, total), (n1, total1) = held[0], held[1]
    assert total == total1 and n0 + n1 == total
    assert all(0.4 < n / total < 0.6 for n in (n0, n1)), held


def test_sharded_checkpoint_holds_the_policy(runs):
    ckpt = runs["sharded"] / "checkpoints" / "step000002.ckpt"
    keys = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("state_dict.")]
    assert any(k.startswith("state_dict.model.") for k in weights)
    assert not [k for k in weights if "ref_model" in k]


@pytest.mark.slow
def test_sharded_checkpoint_resumes(runs, later_runs):
    assert_resumes_steps_3_and_4(runs["sharded"], later_runs["resumed"])


@pytest.mark.slow
def test_precomputed_reference_trains_as_the_frozen_copy(runs, later_runs):
    copy, pre = metrics(runs["sharded"]), metrics(later_runs["precomputed"])
    assert sorted(pre) == list(range(1, STEPS + 1))
    for s in copy:
        assert pre[s]["train/loss"] == pytest.approx(copy[s]["train/loss"], rel=1e-5), s
    assert not SHARDED_LINE.search(later_runs["precomputed_log"])  # no copy to shard


def test_export_is_the_policy_of_one_process(runs):
    from safetensors.torch import load_file

    one = load_file(runs["one"] / "hf_model" / "model.safetensors")
    two = load_file(runs["sharded"] / "hf_model" / "model.safetensors")
    assert one.keys() == two.keys() and not [k for k in two if "ref_model" in k]
    for k in one:
        assert (one[k] - two[k]).abs().max() <= 1e-5, k


@pytest.mark.usefixtures("one_rank_group")
@pytest.mark.parametrize("strategy", ["FULL_SHARD", "SHARD_GRAD_OP"])
def test_frozen_copy_is_sharded_again_after_each_forward(strategy):
    """The reference runs under no_grad, so no backward ever reshards it: its layers free
    their gathered weights after each forward, under SHARD_GRAD_OP too (which keeps the
    policy's until the backward), and none of them recomputes activations."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.loss import labelled_logps
    from matrix.train.sharding import decoder_layers, shard_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4
    )
    config.num_hidden_layers = 2
    ref = LlamaForCausalLM(config).eval().requires_grad_(False)
    fsdp = OmegaConf.create({"activation_checkpointing": True, "sharding_strategy": strategy})
    shard_model(
        ref, tuple(decoder_layers(ref)), fsdp, "32-true", init_device_mesh("cpu", (1,)), True
    )
    assert not ref.is_activation_checkpointing
    ids = torch.randint(0, 100, (2, 8))
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(8).expand(2, 8)}
    with torch.no_grad():
        labelled_logps(ref, batch)
    assert all(isinstance(p, DTensor) for p in ref.parameters())


def test_memory_plan_counts_a_shard_of_the_reference(tmp_path, data_dir):
    """The plan before the run (matrix.train.memory_fit) counts each rank's share of the
    weights and of the reference copy under trainer=fsdp (FSDP2)."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.memory_fit import model_shape, run_setup
    from matrix.train.memory_plan import terms

    cfg = compose_train(tiny_overrides(tmp_path, data_dir / "dpo.jsonl", "x", *COMMON, *TWO))
    dm = SimpleNamespace(units=[], packing=True)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    config.num_hidden_layers = 1
    model = LlamaForCausalLM(config)
    setup = run_setup(cfg, dm, model, False, 2, 0)
    assert setup.shards == 2 and setup.reference_copy and setup.checkpointing
    t = terms(model_shape(model), setup)
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    assert t["reference"] == t["weights"] == whole // 2


@pytest.mark.usefixtures("one_rank_group")
def test_full_checkpoint_loads_the_policy_and_asks_no_reference(tmp_path):
    """A full (one-file) checkpoint of a sharded DPO module holds the policy only: loading it
    fills the policy and leaves the reference copy (Lightning alone asks every registered
    parameter of the file), and a file that lacks a policy key is refused, naming it."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from transformers import LlamaConfig, LlamaForCausalLM

    from matrix.train.dpo import DPOModule
    from matrix.train.sharding import FSDP2Strategy, decoder_layers, shard_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4
    )
    config.num_hidden_layers = 2
    module = DPOModule(LlamaForCausalLM(config), OmegaConf.create({}), OmegaConf.create({}), 1)
    fsdp = OmegaConf.create(
        {
            "activation_checkpointing": False,
            "sharding_strategy": "FULL_SHARD",
            "state_dict_type": "full",
        }
    )
    layers = tuple(decoder_layers(module.model))
    strategy = FSDP2Strategy(set(layers), fsdp, "32-true")
    mesh = init_device_mesh("cpu", (1,))
    shard_model(module.model, layers, fsdp, "32-true", mesh)
    shard_model(module.ref_model, layers, fsdp, "32-true", mesh, frozen=True)
    strategy._lightning_module = strategy.model = module

    def full(m):
        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in m.items()}

    ref_before = full(module.ref_model.state_dict())
    trained = {
        k: v + 1 if k.startswith("model.") else v for k, v in full(module.state_dict()).items()
    }
    assert not [k for k in trained if k.startswith("ref_model.")]
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": trained, "global_step": 2}, path)
    assert strategy.load_checkpoint(path)["global_step"] == 2
    loaded = full(module.state_dict())
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    ref_after = full(module.ref_model.state_dict())
    assert all(torch.equal(ref_after[k], ref_before[k]) for k in ref_before)
    assert module.strict_loading
    del trained["model.model.norm.weight"]
    torch.save({"state_dict": trained}, path)
    with pytest.raises(KeyError, match="model.model.norm.weight"):
        strategy.load_checkpoint(path)
