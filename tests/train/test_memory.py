"""Packed training keeps the same peak memory every step: the train stage logs each step's
peak (train/peak_memory_gb), and it must not climb once the optimizer state exists."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from matrix.common.io import read_jsonl
from matrix.train import memory
from matrix.train.memory import PeakMemory, step_peak_supported
from matrix.train.run import run_train
from matrix.train.sft import SFTModule

from .conftest import compose_train, tiny_overrides

pytestmark = pytest.mark.skipif(not step_peak_supported(), reason="needs Linux /proc peaks")

STEPS = 8
MB = 2**20


def same_rows(path: Path, n: int) -> Path:
    """n copies of one chat (about 120 tokens), so every packed batch is the same shape and
    every step does the same work: its peak can only differ by what earlier steps left."""
    chat = {
        "messages": [
            {"role": "user", "content": " ".join(["the cat"] * 10)},
            {"role": "assistant", "content": " ".join(["a dog runs"] * 30)},
        ]
    }
    path.write_text("".join(json.dumps(chat) + "\n" for _ in range(n)))
    return path


def step_peaks(tmp_path: Path, name: str) -> list[float]:
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            same_rows(tmp_path / f"{name}.jsonl", 8 * STEPS * 4),
            name,
            "data.packing=true",
            "data.max_seq_len=512",
            "data.batch_size=4",
            f"trainer.max_steps={STEPS}",
            "train.checkpoint.every_n_steps=0",
            # deep and narrow: one step's saved activations (~2K tokens x 16 layers x ~4 KB)
            # come to ~130 MB, far above allocator noise, while the 49K-vocabulary head,
            # which dominates a tiny model's time, stays cheap
            "model.config.num_hidden_layers=16",
        )
    )
    run_train(cfg)
    rows = read_jsonl(tmp_path / name / "train" / "metrics.jsonl")
    peaks = [r["train/peak_memory_gb"] * 2**30 for r in rows if "train/peak_memory_gb" in r]
    assert len(peaks) == STEPS
    return peaks


def growth(peaks: list[float]) -> float:
    """How far the peak climbs after the first four steps: step 1 allocates AdamW's state, and
    the allocator may settle over the next ones (with OMP_NUM_THREADS=1 the peak rose 75 MB
    once, by step 4, then stayed flat). A leak keeps climbing every step."""
    return max(peaks[4:]) - max(peaks[:4])


# Flat means within allocator noise (~10 MB here). Retaining each step's autograd graph, the
# leak this guards against, adds ~25-40 MB a step at this size, 100-160 MB over the four steps
# after warm-up (test_a_step_that_keeps_its_graph_is_caught measures it).
FLAT = 48 * MB


def test_packed_training_peak_memory_is_flat_across_steps(tmp_path):
    peaks = step_peaks(tmp_path, "flat")
    assert growth(peaks) < FLAT, [round(p / MB) for p in peaks]


class _Steps:
    """Eight "steps" measured by the train stage's own PeakMemory callback, as Lightning calls
    it: each step touches a fresh 64 MB working buffer (freed at its end, as activations are)
    and, if `leak_mb`, keeps that many MB more alive for good."""

    def __init__(self, leak_mb: int) -> None:
        self.leak_mb, self.kept = leak_mb, []
        self.module = SimpleNamespace(device=torch.device("cpu"), step_metrics={})

    def peaks(self) -> list[float]:
        callback = PeakMemory()
        for i in range(STEPS):
            callback.on_train_batch_start(None, self.module, None, i)
            work = np.ones(64 * MB, dtype=np.uint8)  # every page written: resident
            if self.leak_mb:
                self.kept.append(np.ones(self.leak_mb * MB, dtype=np.uint8))
            del work
            callback.on_train_batch_end(None, self.module, None, None, i)
        return [float(p) for p in callback.peaks]


def test_the_flat_check_sees_a_leak_of_the_size_it_guards_against():
    """The cheap control of the flat-memory check (the one through the train stage,
    test_a_step_that_keeps_its_graph_is_caught, takes minutes): with the same step peaks
    (PeakMemory: reset_peak at each step's start, peak_bytes at its end) and the same
    `growth` and FLAT, steps that free their work measure flat, and steps that keep 25 MB
    each (the low end of the retained-graph leak above) climb past FLAT."""
    flat = _Steps(leak_mb=0).peaks()
    assert growth(flat) < FLAT, [round(p / MB) for p in flat]
    leaky = _Steps(leak_mb=25).peaks()
    assert growth(leaky) > FLAT, [round(p / MB) for p in leaky]


def test_a_refused_peak_reset_fails_loudly(tmp_path, monkeypatch):
    """A clear_refs that cannot be written would leave every later "step peak" the process's
    peak so far, so a growing step would read flat: reset_peak raises, naming the file and
    the cause, instead of carrying on."""
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path)  # exists, but is a folder
    with pytest.raises(RuntimeError, match=f"{tmp_path}: cannot reset the peak") as err:
        memory.reset_peak()
    assert isinstance(err.value.__cause__, IsADirectoryError)
    assert "Is a directory" in str(err.value)


@pytest.mark.slow
def test_a_step_that_keeps_its_graph_is_caught(tmp_path, monkeypatch):
    """The control through the train stage: a training step that keeps its loss (and so its
    whole graph) alive, as a metric logged without .detach() would, climbs past FLAT. Slow (a
    minute of CPU or more); the default suite runs the cheap control above."""
    kept = []
    original = SFTModule.training_step

    def leaky(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        kept.append(loss)
        return loss

    monkeypatch.setattr(SFTModule, "training_step", leaky)
    peaks = step_peaks(tmp_path, "leak")
    assert growth(peaks) > FLAT, [round(p / MB) for p in peaks]


# SmolLM2-135M in fp32 holds 2.2 GB of weights, gradients and AdamW moments next to ~0.5 GB of
# process; its activations take ~1.5 MB per token (bench/train_memory.py), so 8 x 1024 packed
# tokens need ~15 GB. 16 GiB leaves a 24 GB machine room for the OS and the data; before the
# chunked loss (2.0 MB per token) the same batch needed ~19 GB.
SMOLLM2_BUDGET = 16 * 2**30


@pytest.mark.slow
def test_packed_smollm2_batches_train_within_budget(tmp_path):
    """The issue's setting: SmolLM2-135M, packed rows of 1024 tokens, 8 per batch, fp32, on
    CPU through the train stage; every step within SMOLLM2_BUDGET and no step above the
    first four (growth). A packed batch is one padding-free row, so its memory follows its token
    count: every chat here has the same length (~507 tokens, two to a 1024-token unit), so
    every batch holds the same tokens and a climb is growth, not a larger batch. With
    `trainer.release_freed_memory=true`, the setting for a machine where memory is the
    limit: without it glibc keeps freed activations in its heap, which settles ~0.5 GB higher
    over the first steps (docs/train.md). Takes minutes (and ~10 GB)."""
    words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "with"]
    rows = []
    for i in range(64):
        answer = " ".join(words[(i + k) % 10] for k in range(465))
        msgs = [
            {"role": "user", "content": f"question {i:02d}: " + " ".join(words[:5])},
            {"role": "assistant", "content": answer},
        ]
        rows.append(json.dumps({"messages": msgs}))
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = compose_train(
        [
            "model=smollm2_135m",
            "logger=none",
            f"paths.runs_dir={tmp_path}",
            "run.name=smollm2",
            f"data.path={data}",
            "data.packing=true",
            "data.max_seq_len=1024",
            "data.batch_size=8",
            "trainer.max_steps=6",  # growth() compares steps 5-6 with the four warm-up ones
            "trainer.max_epochs=2",  # 64 chats, two to a packed row: 4 batches an epoch
            "trainer.release_freed_memory=true",
            "trainer.progress_bar=false",
            "train.checkpoint.every_n_steps=0",
            "train.memory.plan=off",  # the setting as given, not checkpointed to fit
        ]
    )
    manifest = run_train(cfg)
    rows = read_jsonl(tmp_path / "smollm2" / "train" / "metrics.jsonl")
    peaks = [r["train/peak_memory_gb"] * 2**30 for r in rows if "train/peak_memory_gb" in r]
    assert manifest["counts"]["steps"] == 6 and len(peaks) == 6
    assert max(peaks) < SMOLLM2_BUDGET, [round(p / MB) for p in peaks]
    assert growth(peaks) < FLAT, [round(p / MB) for p in peaks]
