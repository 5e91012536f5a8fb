"""A run resumed from a mid-epoch checkpoint continues exactly as the uninterrupted run:
same batches, same optimizer and scheduler state, same losses, with or without validation."""

from __future__ import annotations

import pytest

from matrix.common.io import read_jsonl
from matrix.train.resume import checkpoint_step, newest_checkpoint
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides

# 24 rows / (2 rows x 2 micro-batches) = 6 steps per epoch; 2 epochs; checkpoint every 2
SETTINGS = (
    "data.packing=false",
    "data.batch_size=2",
    "trainer.accumulate_grad_batches=2",
    "trainer.max_epochs=2",
    "train.checkpoint.every_n_steps=2",
    "train.checkpoint.keep=-1",
)


# 6 of the 24 rows held out: 18 / (2 x 2) = 4.5 -> 5 steps per epoch, 10 in all; validation
# after micro-batches 4 and 8 of each epoch (steps 2, 4, 7, 9), and once more after training
VALIDATION = ("data.val_fraction=0.25", "trainer.val_check_interval=4")


def losses(run_dir, key: str = "train/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_jsonl(run_dir / "metrics.jsonl") if key in r}


@pytest.fixture(scope="module", params=[(), VALIDATION], ids=["no_val", "val"])
def full_run(request, tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("runs")
    extra = (*SETTINGS, *request.param)
    cfg = compose_train(tiny_overrides(runs, data_dir / "sft_short.jsonl", "full", *extra))
    manifest = run_train(cfg)
    return runs / "full" / "train", manifest, extra


def test_uninterrupted_run_writes_metrics_and_manifest(full_run):
    run_dir, manifest, extra = full_run
    if extra != SETTINGS:
        assert manifest["counts"]["steps"] == 10
        assert manifest["counts"]["validation_rows"] == 6
        assert sorted(losses(run_dir, "val/loss")) == [2, 4, 7, 9, 10]
        return
    assert manifest["counts"]["validation_rows"] == 0
    assert manifest["counts"]["steps"] == 12
    assert manifest["counts"]["rows"] == 24
    assert manifest["counts"]["truncated_assistant_turns"] >= 0
    assert manifest["attention"] == "sdpa"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"):
        assert all(r[key] > 0 for r in rows), key
    assert all(r["train/padding_efficiency"] <= 1 for r in rows)
    assert "train/mfu" not in rows[0]  # undefined on CPU, not faked
    curve = losses(run_dir)
    assert curve[12] < curve[1]


@pytest.mark.parametrize("step", [4, 6, 8])  # mid-epoch 1, its last step, mid-epoch 2
def test_resume_mid_epoch_reproduces_the_loss_curve(full_run, tmp_path, data_dir, step):
    run_dir, manifest, extra = full_run
    last = manifest["counts"]["steps"]
    ckpt = run_dir / "checkpoints" / f"step{step:06d}.ckpt"
    assert ckpt.exists()
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "sft_short.jsonl",
            "resumed",
            *extra,
            f"train.checkpoint.resume={ckpt}",
        )
    )
    assert run_train(cfg)["counts"]["steps"] == last
    for key in ("train/loss", "val/loss"):
        full, resumed = losses(run_dir, key), losses(tmp_path / "resumed" / "train", key)
        if key == "train/loss":
            assert sorted(resumed) == list(range(step + 1, last + 1))
        else:
            assert sorted(resumed) == [s for s in full if s > step]
        for s in resumed:
            assert resumed[s] == pytest.approx(full[s], rel=1e-5, abs=1e-6), (key, s)


def test_rerun_resumes_in_place_and_a_changed_config_starts_fresh(tmp_path, data_dir):
    """train.checkpoint.resume=auto (the default): a rerun of a finished run resumes from its
    newest checkpoint and trains no step twice (metrics.jsonl keeps one row per step); a
    rerun with another train config removes the old checkpoints and starts fresh."""
    extra = ("data.packing=false", "trainer.max_steps=4", "train.checkpoint.every_n_steps=2")
    extra = (*extra, "train.checkpoint.keep=-1")
    args = lambda *more: tiny_overrides(tmp_path, data_dir / "sft_short.jsonl", "p", *extra, *more)  # noqa: E731
    run_dir, ckpts = tmp_path / "p" / "train", tmp_path / "p" / "train" / "checkpoints"
    first = run_train(compose_train(args()))
    assert first["resumed_from"] is None
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == [
        "last.ckpt",
        "step000002.ckpt",
        "step000004.ckpt",
    ]
    # last.ckpt is a link to the newest step checkpoint, not a second copy of it
    assert (ckpts / "last.ckpt").is_symlink()
    assert (ckpts / "last.ckpt").resolve() == (ckpts / "step000004.ckpt").resolve()

    again = run_train(compose_train(args()))
    assert again["resumed_from"] == str(ckpts / "last.ckpt")
    assert read_jsonl(run_dir / "metrics.jsonl") == rows  # nothing trained again
    assert again["counts"] == first["counts"]  # tokens_trained_on came from the checkpoint
    assert again["final_metrics"] == first["final_metrics"]

    # last.ckpt one interval behind a step checkpoint (killed between the two writes)
    (ckpts / "last.ckpt").unlink()  # a link to the newest step checkpoint: not written through
    (ckpts / "last.ckpt").write_bytes((ckpts / "step000002.ckpt").read_bytes())
    assert newest_checkpoint(ckpts) == ckpts / "step000004.ckpt"

    changed = run_train(compose_train(args("optimizer.lr=2e-3")))
    assert changed["resumed_from"] is None
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert losses(run_dir)[4] != pytest.approx(rows[-1]["train/loss"], rel=1e-6)

    fresh = run_train(compose_train(args("optimizer.lr=2e-3", "train.checkpoint.resume=null")))
    assert fresh["resumed_from"] is None
    with pytest.raises(FileNotFoundError, match="train.checkpoint.resume=/nope.ckpt"):
        run_train(compose_train(args("train.checkpoint.resume=/nope.ckpt")))


def test_checkpoints_off_writes_none_and_still_exports(tmp_path, data_dir):
    overrides = [
        "trainer.max_steps=2",
        "train.checkpoint.every_n_steps=1",
        "train.checkpoint.enabled=false",
    ]
    cfg = compose_train(tiny_overrides(tmp_path, data_dir / "sft_short.jsonl", "off", *overrides))
    manifest = run_train(cfg)
    out = tmp_path / "off" / "train"
    assert manifest["counts"]["steps"] == 2 and (out / "hf_model" / "config.json").is_file()
    assert not list(out.rglob("*.ckpt"))


def test_every_n_steps_zero_writes_one_checkpoint_at_the_end(tmp_path, data_dir):
    """`every_n_steps=0`: last.ckpt when fit ends, and no checkpoint at the first epoch's end
    (Lightning's default every_n_epochs=1 wrote one there: 1.6 GB and 10 s in the demo)."""
    overrides = ["data.packing=false", "trainer.max_epochs=2", "train.checkpoint.every_n_steps=0"]
    cfg = compose_train(tiny_overrides(tmp_path, data_dir / "sft_short.jsonl", "end", *overrides))
    manifest = run_train(cfg)
    ckpts = tmp_path / "end" / "train" / "checkpoints"
    assert [p.name for p in ckpts.glob("*.ckpt")] == ["last.ckpt"]
    assert checkpoint_step(ckpts / "last.ckpt") == manifest["counts"]["steps"] > 1


def test_a_rerun_on_changed_data_trains_again_instead_of_resuming(tmp_path, data_dir):
    """Same config, but the data file at the same path was regenerated since the finished run
    (an upstream step ran again): its checkpoints belong to other data and are not resumed."""
    data = tmp_path / "sft.jsonl"
    data.write_bytes((data_dir / "sft_short.jsonl").read_bytes())
    extra = ("data.packing=false", "trainer.max_steps=2", "train.checkpoint.every_n_steps=2")
    cfg = compose_train(tiny_overrides(tmp_path / "runs", data, "d", *extra))
    first = run_train(cfg)
    data.write_bytes((data_dir / "sft.jsonl").read_bytes())
    again = run_train(cfg)
    assert again["resumed_from"] is None  # a finished run of the same data would resume
    run_dir = tmp_path / "runs" / "d" / "train"
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r] == [1, 2]
    assert again["inputs"]["data"]["sha256"] != first["inputs"]["data"]["sha256"]
    (stale,) = (tmp_path / "runs" / "d" / ".stale").glob(f"train__{first['config_hash']}__*")
    assert (stale / "manifest.json").exists()
