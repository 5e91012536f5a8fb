import pytest


@pytest.fixture(autouse=True)
def _own_llm_call_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """LLM answers are cached across runs by design (llm.cache); each test gets its own
    cache so no test is answered by another test's (or an earlier run's) backend."""
    monkeypatch.setenv("MATRIX_LLM_CACHE", str(tmp_path_factory.mktemp("llm_cache")))
