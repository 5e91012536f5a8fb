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


def test_throughput_variants_compose_and_differ_from_eager_in_one_setting(tmp_path) -> None:
    """Every `--mfu-variants` default composes and passes the config checks on CPU, and each
    differs from `eager` only by its own overrides (so the table compares one change)."""
    from matrix.core.config_check import config_problems
    from tools.gpu_check_variants import MFU_VARIANTS, THROUGHPUT

    tok = gpu_check.tokenizer_dir()
    data = gpu_check.write_data(tmp_path / "data", sft_rows=4, words=(3, 5))
    assert THROUGHPUT[0] == "eager" and len(THROUGHPUT) == 8

    def overrides(v: str) -> list[str]:
        kw = {k: x for k, x in MFU_VARIANTS[v].items() if k != "max_layers"}
        return gpu_check.mfu_overrides(tmp_path, tok, data, 6, 12, cuda=True, **kw)

    eager = set(overrides("eager"))
    for v in THROUGHPUT:
        cfg = gpu_check.compose(overrides(v))
        config_problems(cfg, "train").raise_if_any("train")
        assert len(set(overrides(v)) - eager) <= 3, v
    compiled = gpu_check.compose(overrides("compiled + fused loss"))
    assert compiled.model.compile == "layers" and compiled.model.cross_entropy == "fused"
    pre = gpu_check.compose(overrides("dpo, precomputed reference"))
    assert pre.train.objective.reference == "precomputed"


def test_variants_past_the_time_budget_or_without_flash_attn_are_named_skipped(
    tmp_path, monkeypatch
) -> None:
    from tools import gpu_check_variants

    monkeypatch.setattr(gpu_check, "BUDGET_S", -1.0)  # every variant starts past the budget
    monkeypatch.setattr(
        gpu_check, "kernel_availability", lambda: {"flash_attention_2": "no flash_attn here"}
    )
    report = gpu_check.Report("gpu", "test")
    names = gpu_check_variants.THROUGHPUT
    gpu_check.run_variants(report, tmp_path, tmp_path, tmp_path, names)
    assert [s.status for s in report.steps] == ["skipped"] * len(names)
    notes = {s.name.split("[")[1].rstrip("]"): s.note for s in report.steps}
    assert notes["flash packed, flash-attn"] == "no flash_attn here"
    assert notes["eager"].startswith("time budget")


def test_the_report_tables_each_variant_against_eager() -> None:
    report = gpu_check.Report("gpu", "test")
    for variant, tps in (("eager", 1000.0), ("compiled", 1250.0)):
        figures = {"variant": variant, "layers": "6/32", "attention": "flex_attention"}
        figures.update({"tokens/s": tps, "MFU": tps / 4000, "peak GiB": 20.0, "compile s": 3.0})
        report.steps.append(gpu_check.Step(f"MFU [{variant}]", figures=figures))
    table = report.markdown()
    assert "| compiled | 6/32 | flex_attention | 1,250 | 1.25 | 31.2% | 20.0 | 3 |" in table
    assert "| eager | 6/32 | flex_attention | 1,000 | 1.00 | 25.0% |" in table
