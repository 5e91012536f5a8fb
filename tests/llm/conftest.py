from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from matrix.llm.errors import LLMError
from matrix.llm.server import REPO, LocalServer, vllm_python

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A real vLLM OpenAI-compatible server serving the embedded SmolLM2 as "smollm2" on
    127.0.0.1, shared by the server tests (installs the server venv on first use)."""
    try:
        vllm_python()
    except LLMError:
        t0 = time.monotonic()
        subprocess.run([str(REPO / "scripts/setup_llm_server.sh")], check=True)
        log.warning("installed the vLLM venv in %.0fs", time.monotonic() - t0)
    server = LocalServer(free_port(), log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    try:
        log.warning("vLLM ready in %.0fs", server.wait_ready())
        yield server
    finally:
        server.stop()
