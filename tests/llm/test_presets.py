"""Every llm preset composes, builds its backends without touching a model or a network,
and lets a single role move to another backend from the command line."""

import pytest
from hydra import compose, initialize_config_dir

from matrix.core.provenance import resolved_config
from matrix.llm.hf import HFBackend
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.roles import Roles
from matrix.llm.server import REPO
from matrix.llm.vllm_backend import VLLMBackend

PRESETS = {
    "smollm2_local": HFBackend,
    "smollm2_server": OpenAIBackend,
    "openai_compatible": OpenAIBackend,
    "vllm_llama3_8b_instruct": VLLMBackend,
    "paper": OpenAIBackend,
}


def compose_llm(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("base", overrides=list(overrides))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_builds_and_roles_can_be_overridden(preset, tmp_path):
    cfg = compose_llm(
        f"llm={preset}",
        f"llm.cache.dir={tmp_path}",
        "llm.roles.judge.backend=smollm2",
        "llm.budget.max_cost=2.5",
    )
    if preset == "openai_compatible":
        cfg.llm.backends.api.model = "gpt-4o-mini"  # the one required value (model: ???)
    roles = Roles(cfg.llm)
    assert isinstance(roles.get("agent").backend, PRESETS[preset])
    assert isinstance(roles.get("judge").backend, HFBackend)
    assert roles.cache is not None and roles.budget.max_cost == 2.5
    assert set(roles.names()) >= {"agent", "modulator", "summarizer", "generator", "judge"}


def test_api_key_never_reaches_the_resolved_config(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-123")
    cfg = compose_llm("llm=openai_compatible", "llm.backends.api.model=gpt-4o-mini")
    dumped = str(resolved_config(cfg))
    assert "sk-live-123" not in dumped and "OPENAI_API_KEY" in dumped
