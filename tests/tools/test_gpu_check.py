"""`make gpu-check` without CUDA: the dry mode composes every step's config, checks the wheel
list, rehearses the train stage and generation with only a bare CUDA machine's packages plus
the listed wheels importable, and names every GPU step it skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools import gpu_check


def test_dry_mode_runs_through_make_gpu_checks_script(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "PY": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry" and report["ok"]
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["package versions"]["status"] == "ok"
    assert steps["compose every step's config"]["status"] == "ok"
    assert steps["wheel list"]["status"] == "ok"
    rehearsal = steps["bare-machine rehearsal (CPU SFT run + generation)"]
    assert rehearsal["status"] == "ok" and rehearsal["figures"]["steps"] == 2
    skipped = [s for s in report["steps"] if s["status"] == "skipped"]
    names = {s["name"] for s in skipped}
    for kernel in gpu_check.KERNELS:
        assert {f"sft bf16 [{kernel}]", f"packed == padded [{kernel}]"} <= names
    assert any(n.startswith("MFU") for n in names) and any(n.startswith("fsdp") for n in names)
    assert all(s["note"] == "no CUDA device (dry mode)" for s in skipped)
    table = (out / "gpu_check.md").read_text()
    assert "| sft bf16 [sdpa] | skipped |" in table and "dry mode" in table


def test_rehearsal_fails_when_the_wheel_list_misses_a_needed_package(tmp_path, monkeypatch):
    short = tmp_path / "gpu_wheels.txt"
    short.write_text("hydra-core\nantlr4-python3-runtime\n")  # omegaconf left out
    monkeypatch.setattr(gpu_check, "WHEEL_LIST", short)
    monkeypatch.setattr(gpu_check, "WHEELS_DIR", tmp_path / "no-wheels")  # use the list
    report = gpu_check.Report("dry", "cpu")
    gpu_check.check_rehearsal(report, tmp_path / "rehearsal", gpu_check.tokenizer_dir())
    (step,) = report.steps
    assert step.status == "failed" and "omegaconf" in step.note


def test_wheel_folder_must_hold_every_listed_wheel(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "hydra_core-1.3.8-py3-none-any.whl").write_bytes(b"")
    report = gpu_check.Report("dry", "cpu")
    gpu_check.check_wheels(report, wheels)
    (step,) = report.steps
    assert step.status == "failed" and "omegaconf" in step.note and "build_gpu_wheels" in step.note


@pytest.mark.parametrize(("gib", "layers"), [(80, 10), (141, 19), (24, 1)])
def test_mfu_depth_fits_half_the_memory(gib: int, layers: int) -> None:
    # 16 bytes a parameter (fp32 weights, grads, AdamW moments); 49,152-token vocabulary
    assert gpu_check.mfu_layers(gib * 2**30, 49152) == layers


@pytest.mark.slow
def test_gpu_steps_run_on_cpu_with_the_same_code(tmp_path: Path) -> None:
    """The SFT, DPO and packed == padded steps and the export check of the GPU run, on CPU
    (trainer=cpu, sdpa): what the GPU run reads from manifests and metrics is there."""
    tok = gpu_check.tokenizer_dir()
    data = gpu_check.write_data(tmp_path / "data", sft_rows=40, words=(5, 60))
    runs = tmp_path / "runs"
    report = gpu_check.Report("cpu", "cpu")
    gpu_check.check_sft_dpo(report, runs, "sdpa", data, tok, steps=3, cuda=False)
    assert [s.status for s in report.steps] == ["ok", "ok", "ok"], report.markdown()
    sft, dpo, packed = (s.figures for s in report.steps)
    assert sft["steps"] == dpo["steps"] == 3 and dpo["reward margin last"] is not None
    assert packed["leak seq logp gap"] > 10 * packed["seq logp gap"]
    out = runs / "sft_sdpa" / "train"
    diff = gpu_check.checkpoint_logits_match(
        out / "checkpoints" / "last.ckpt", out / "hf_model", gpu_check.TOKENS
    )
    assert diff == 0.0
