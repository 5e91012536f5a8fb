"""Shared fixtures: a tiny random-init Llama with the SmolLM2 tokenizer (fast, deterministic,
real transformers code paths) and configs composed from the real conf/ tree."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Every cache a test may write, by the variable that moves it (the defaults are in $HOME).
_SESSION_CACHES = {
    "MATRIX_CACHE": "matrix",  # paths.cache_dir: embedding and LLM call caches, server records
    "HF_HOME": "huggingface",  # hub, modules, datasets, tokens
    "SENTENCE_TRANSFORMERS_HOME": "sentence-transformers",
    "MPLCONFIGDIR": "matplotlib",  # font cache and config
    "WANDB_CACHE_DIR": "wandb/cache",  # the runs go to each stage's folder (logger.wandb)
    "WANDB_CONFIG_DIR": "wandb/config",
    "WANDB_DATA_DIR": "wandb/data",
    "WANDB_ARTIFACT_DIR": "wandb/artifacts",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",  # default ~/.triton
    "TORCH_HOME": "torch",
    "XDG_CACHE_HOME": "xdg/cache",  # the rest: pip, vLLM, torch extensions, ...
    "XDG_CONFIG_HOME": "xdg/config",
    "XDG_DATA_HOME": "xdg/data",
    "XDG_STATE_HOME": "xdg/state",
}
# The SmolLM2 folder converted from the package's GGUF takes about a minute of CPU to make and
# is only read by tests: it is kept across sessions in the project's own (git-ignored) .cache/,
# not in $HOME and not redone per session. MATRIX_MODEL_CACHE set by the caller wins.
MODEL_CACHE = ROOT / ".cache" / "models"


@pytest.hookimpl(trylast=True)  # after pytest's own tmpdir plugin has set up the temp folder
def pytest_configure(config: pytest.Config) -> None:
    """Point every cache at a folder of this session's pytest temp dir, before any test module
    is imported (libraries read these variables at import). Undone at the end of the session."""
    base = config._tmp_path_factory.mktemp("caches", numbered=False)
    mp = pytest.MonkeyPatch()
    for var, sub in _SESSION_CACHES.items():
        (base / sub).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(base / sub))
    mp.setenv("MATRIX_MODEL_CACHE", os.environ.get("MATRIX_MODEL_CACHE") or str(MODEL_CACHE))
    config.add_cleanup(mp.undo)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One real vLLM OpenAI-compatible server for the whole test session, serving the
    embedded SmolLM2 as "smollm2" on 127.0.0.1 exactly as `make llm-server` does (installs the
    server venv on first use). Tests that kill it start it again."""
    from matrix.llm.errors import LLMError
    from matrix.llm.server import LocalServer, vllm_python

    log = logging.getLogger(__name__)
    try:
        vllm_python()
    except LLMError:
        t0 = time.monotonic()
        subprocess.run([str(ROOT / "scripts/setup_llm_server.sh")], check=True)
        log.warning("installed the vLLM venv in %.0fs", time.monotonic() - t0)
    server = LocalServer(free_port(), log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    try:
        log.warning("vLLM ready in %.0fs", server.wait_ready())
        yield server
    finally:
        server.stop()


from tests.doubles import sim_dir  # noqa: E402,F401  (fixture: a hand-written simulate output)
