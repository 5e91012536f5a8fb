"""The call cache in front of the real embedded model (transformers, CPU)."""

from hydra import compose, initialize_config_dir

from matrix.llm.roles import Roles
from matrix.llm.server import REPO
from tests.doubles import chats_of


def local_roles(cache_dir) -> Roles:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("base", overrides=["llm=smollm2_local", f"llm.cache.dir={cache_dir}"])
    return Roles(cfg.llm)


def test_rerun_of_the_embedded_model_is_served_from_the_cache(tmp_path):
    chats = chats_of("Name a fruit.", "Name a colour.")
    first = local_roles(tmp_path)
    a = first.get("judge").generate(chats, max_new_tokens=4)
    assert first.ledger()["roles"]["judge"]["calls"] == 2
    backend = first.backend("smollm2")

    second = local_roles(tmp_path)
    second._backends["smollm2"] = backend  # reuse the loaded weights; it must not be called
    calls = []
    original = backend.generate
    backend.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    b = second.get("judge").generate(chats, max_new_tokens=4)
    assert calls == [] and a == b
    metrics = second.metrics()
    assert metrics["llm/judge/cache_hits"] == 2 and metrics["llm/total/calls"] == 0
    # A sampled role is cached per seed: the same seed again is free, a new seed is not.
    agent = second.get("agent")
    agent.generate(chats[:1], seed=5, max_new_tokens=4)
    agent.generate(chats[:1], seed=5, max_new_tokens=4)
    agent.generate(chats[:1], seed=6, max_new_tokens=4)
    assert len(calls) == 2
