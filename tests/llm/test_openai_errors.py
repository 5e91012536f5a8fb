"""OpenAI backend errors that need no server."""

import pytest

from matrix.llm.errors import EndpointUnreachable, LLMError
from matrix.llm.local_hosts import is_local
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.openai_failures import retry_after
from matrix.llm.openai_payload import truncate_left
from matrix.llm.protocol import Sampling
from tests.llm.conftest import free_port


def test_unreachable_endpoint_names_the_url_and_how_to_start_a_server():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend("smollm2", base_url=url, api_key_env=None, max_retries=1)
    with pytest.raises(EndpointUnreachable) as e:
        backend.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=4))
    msg = str(e.value)
    assert url in msg and "matrix.llm.server" in msg and "base_url" in msg


def test_hosted_endpoint_needs_its_key_env_var(monkeypatch):
    monkeypatch.delenv("MATRIX_TEST_KEY", raising=False)
    backend = OpenAIBackend(
        "gpt-4o-mini", base_url="https://api.example.com/v1", api_key_env="MATRIX_TEST_KEY"
    )
    with pytest.raises(LLMError, match="MATRIX_TEST_KEY"):
        backend.generate([[{"role": "user", "content": "hi"}]], Sampling())
    monkeypatch.setenv("MATRIX_TEST_KEY", "sk-secret-value")
    assert "sk-secret-value" not in repr(vars(backend))  # the key is never kept on the object


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://0.0.0.0:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://localhost.example.com/v1", False),  # a name containing "localhost"
        ("https://proxy.example.com/127.0.0.1/v1", False),  # a path containing an address
    ],
)
def test_local_hosts_are_read_from_the_url_host(url, local):
    assert is_local(url) is local


def test_retry_after_header_forms():
    class R:
        def __init__(self, headers):
            self.headers = headers

    class E(Exception):
        def __init__(self, headers):
            self.response = R(headers)

    assert retry_after(E({"retry-after": "3"})) == 3.0
    assert retry_after(E({"retry-after-ms": "250"})) == 0.25
    assert retry_after(E({})) is None
    assert retry_after(ValueError()) is None
    assert 0 <= retry_after(E({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) < 1


def test_truncate_left_uses_the_reported_sizes():
    msg = (
        "This model's maximum context length is 2048 tokens. However, your prompt contains "
        "at least 4096 input tokens"
    )
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x" * 1000}]
    cut = truncate_left(chat, msg, max_new_tokens=48)
    assert cut[0] == chat[0]
    assert 400 < len(cut[1]["content"]) < 500  # ~ (2048 - 48) / 4096 of it, the end kept
    assert chat[1]["content"] == "x" * 1000  # the caller's chat is not modified


def test_a_failed_batch_leaves_no_unread_task_exceptions(caplog, monkeypatch):
    """Several rows of a batch fail together (a dead server answers each with an error):
    the first error is raised, and asyncio is left no other row's exception to print as
    "Task exception was never retrieved". Each row fails at its first step here, so all of
    them fail before the batch looks at any."""
    import gc

    backend = OpenAIBackend(
        "smollm2",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        api_key_env=None,
        check_model=False,
        max_concurrency=8,
    )

    async def fails(client, chat, sampling, row):
        raise LLMError(f"row {row} failed")

    monkeypatch.setattr(backend, "_complete", fails)
    chats = [[{"role": "user", "content": f"hi {i}"}] for i in range(8)]
    with caplog.at_level("ERROR", logger="asyncio"), pytest.raises(LLMError, match="row 0"):
        backend.generate(chats, Sampling(max_new_tokens=4))
    gc.collect()
    assert "never retrieved" not in caplog.text
