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
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.checkpoint import FileSystemReader

from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides
from .test_fsdp2 import TWO, metrics

ROOT = Path(__file__).resolve().parents[2]
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
    """`python train.py` on two ranks (Lightning launches the second); the run folder and
    both ranks' console output."""
    overrides = tiny_overrides(runs, data, name, *COMMON, *TWO, *extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return runs / name / "train", out.stdout + out.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("fsdp2_dpo")
    data = data_dir / "dpo.jsonl"
    run_train(compose_train(tiny_overrides(runs, data, "one", *COMMON, *ONE)))
    sharded, log = train_two_ranks(runs, data, "sharded")
    step2 = sharded / "checkpoints" / "step000002.ckpt"
    resumed, _ = train_two_ranks(runs, data, "resumed", f"train.checkpoint.resume={step2}")
    pre, pre_log = train_two_ranks(
        runs, data, "precomputed", "train.objective.reference=precomputed"
    )
    return {
        "one": runs / "one" / "train",
        "sharded": sharded,
        "resumed": resumed,
        "precomputed": pre,
        "log": log,
        "precomputed_log": pre_log,
    }


def test_two_ranks_train_dpo_as_one_process(runs):
    one, two = metrics(runs["one"]), metrics(runs["sharded"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    assert two[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    for s in one:
        assert two[s]["train/loss"] == pytest.approx(one[s]["train/loss"], rel=1e-5), s
        assert two[s]["train/grad_norm"] == pytest.approx(one[s]["train/grad_norm"], rel=1e-3), s
    assert two[STEPS]["train/loss"] < two[1]["train/loss"]


def test_reference_copy_is_sharded_on_each_rank(runs):
    """Each rank's log line counts the reference's parameters it holds (DTensor local shards)."""
    held = {int(r): (int(n), int(total)) for r, n, total in SHARDED_LINE.findall(runs["log"])}
    assert sorted(held) == [0, 1], runs["log"][-2000:]
    (n0, total), (n1, total1) = held[0], held[1]
    assert total == total1 and n0 + n1 == total
    assert all(0.4 < n / total < 0.6 for n in (n0, n1)), held
    assert not SHARDED_LINE.search(runs["precomputed_log"])  # no copy to shard


def test_sharded_checkpoint_holds_the_policy_and_resumes(runs):
    ckpt = runs["sharded"] / "checkpoints" / "step000002.ckpt"
    keys = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("state_dict.")]
    assert any(k.startswith("state_dict.model.") for k in weights)
    assert not [k for k in weights if "ref_model" in k]
    full, resumed = metrics(runs["sharded"]), metrics(runs["resumed"])
    assert sorted(resumed) == [3, 4]
    for s in (3, 4):
        assert resumed[s]["train/loss"] == pytest.approx(full[s]["train/loss"], rel=1e-6), s


def test_precomputed_reference_trains_as_the_frozen_copy(runs):
    copy, pre = metrics(runs["sharded"]), metrics(runs["precomputed"])
    assert sorted(pre) == list(range(1, STEPS + 1))
    for s in copy:
        assert pre[s]["train/loss"] == pytest.approx(copy[s]["train/loss"], rel=1e-5), s


def test_export_is_the_policy_of_one_process(runs):
    from safetensors.torch import load_file

    one = load_file(runs["one"] / "hf_model" / "model.safetensors")
    two = load_file(runs["sharded"] / "hf_model" / "model.safetensors")
    assert one.keys() == two.keys() and not [k for k in two if "ref_model" in k]
    for k in one:
        assert (one[k] - two[k]).abs().max() <= 1e-5, k
