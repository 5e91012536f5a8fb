"""Shared fixtures: a tiny random-init Llama with the SmolLM2 tokenizer (fast, deterministic,
real transformers code paths) and configs composed from the real conf/ tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_llama(out: Path, seed: int = 0, **shape) -> Path:
    """A random-init 2-layer Llama with the SmolLM2 tokenizer, saved to `out`; `shape`
    overrides LlamaConfig fields (sizes)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from matrix.llm.embedded import smollm2_hf_dir

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    torch.manual_seed(seed)
    fields = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        **shape,
    }
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **fields,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def tiny_llm_overrides(model_dir: Path) -> list[str]:
    """Hydra overrides that put every LLM role on the tiny random model."""
    return [
        f"llm.backends.smollm2.model={model_dir}",
        "llm.backends.smollm2.batch_size=64",
    ]


# A random-init model never stops by itself, writes no language, and its greedy answers are
# runs of newlines (empty once stripped): keep its rows anyway and let the responder sample.
RANDOM_MODEL_OVERRIDES = [
    "generate.filters.drop_truncated=false",
    "generate.filters.language=null",
    "generate.filters.min_instruction_chars=1",
    "generate.filters.refusal_patterns=[]",
    "llm.roles.responder.temperature=1.0",
]


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


@pytest.fixture(autouse=True)
def _own_llm_call_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """LLM answers are cached across runs by design (llm.cache); each test gets its own
    cache so no test is answered by another test's (or an earlier run's) backend."""
    monkeypatch.setenv("MATRIX_LLM_CACHE", str(tmp_path_factory.mktemp("llm_cache")))
