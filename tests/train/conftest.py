"""Fixtures for the train tests: the SmolLM2 tokenizer, toy chat/preference files, and
configs composed from conf/ exactly as `train.py` composes them (tiny_debug model, CPU)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF = str(Path(__file__).resolve().parents[2] / "conf")
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "runs",
    "fast",
    "slow",
    "blue",
    "green",
    "house",
    "tree",
    "river",
    "sky",
    "stone",
    "light",
    "rain",
]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_sft(path: Path, n: int, seed: int = 0, max_words: int = 60) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            msgs = [
                {"role": "user", "content": words(rng, rng.randint(2, 20))},
                {"role": "assistant", "content": words(rng, rng.randint(3, max_words))},
            ]
            if i % 3 == 0:  # some multi-turn rows
                msgs += [
                    {"role": "user", "content": words(rng, 4)},
                    {"role": "assistant", "content": words(rng, rng.randint(3, max_words // 3))},
                ]
            f.write(json.dumps({"messages": msgs, "scenario_ids": [i]}) + "\n")
    return path


def write_dpo(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable preference: chosen answers start 'yes', rejected ones 'no'. Answers come as
    a string or as a message list (both formats are accepted)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            body = words(rng, rng.randint(2, 8))
            chosen = "yes " + body
            rejected = "no " + body
            row = {
                "prompt": [{"role": "user", "content": words(rng, rng.randint(2, 10))}],
                "chosen": chosen if i % 2 else [{"role": "assistant", "content": chosen}],
                "rejected": rejected,
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from omegaconf import OmegaConf

    from matrix.train.models import load_tokenizer

    return load_tokenizer(OmegaConf.create({"path": "embedded:smollm2-135m-instruct"}))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_sft(d / "sft.jsonl", 48)
    write_sft(d / "sft_short.jsonl", 24, seed=1, max_words=12)
    write_dpo(d / "dpo.jsonl", 32)
    return d


def tiny_overrides(runs: Path, data: Path, name: str, *extra: str) -> list[str]:
    return [
        "model=tiny_debug",
        "logger=none",
        f"paths.runs_dir={runs}",
        f"run.name={name}",
        f"data.path={data}",
        "data.max_seq_len=256",
        "trainer.progress_bar=false",
        "trainer.deterministic=true",
        "optimizer.lr=1e-3",
        *extra,
    ]


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-rank gloo process group in this process (removed after the test)."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()
