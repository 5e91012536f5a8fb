"""A run against an OpenAI-compatible server prints the run's own lines, not one per LLM call
(httpx's `HTTP Request: POST ... 200 OK`), nor one per unroutable item (a count per round),
unless debug output is asked for (`hydra.verbose`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.core.cli import CHATTY_LOGGERS, quiet_logs
from tests.conftest import ROOT
from tests.llm.openai_http import OpenAIHTTPServer


def test_simulate_against_a_server_logs_no_request_lines(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MATRIX_RUNS_DIR": str(tmp_path / "runs"),
        "MATRIX_CACHE": str(tmp_path / "cache"),
        "MATRIX_LLM_CACHE": str(tmp_path / "llm_cache"),
        "PYTHONPATH": str(ROOT),
    }
    with OpenAIHTTPServer("smollm2") as server:
        out = subprocess.run(
            [
                sys.executable,
                "simulate.py",
                "debug=tiny",
                "llm=smollm2_server",
                f"llm.backends.server.base_url={server.base_url}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(server.posts) > 20  # every agent, modulator and summarizer call went over HTTP
    (log_file,) = (tmp_path / "runs").rglob("simulate.log")  # Hydra's copy of the console log
    for text in (out.stdout + out.stderr, log_file.read_text()):
        assert "simulate: writing to" in text  # the run's own lines are there
        assert "HTTP Request" not in text
        # the scripted server's answers route nothing: counted once per round, not per item
        assert "gave no usable routing for item" not in text
        assert "round 1: the modulator gave no usable routing for 4 items" in text


@pytest.fixture
def restore_levels():
    names = ("", *CHATTY_LOGGERS)
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def test_request_loggers_say_warnings_only_unless_debug_is_asked_for(restore_levels) -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.INFO)  # Hydra's default
    quiet_logs()
    assert all(logging.getLogger(n).level == logging.WARNING for n in CHATTY_LOGGERS)
    assert logging.getLogger("httpx2").isEnabledFor(logging.WARNING)

    # hydra.verbose=[httpx2]: that logger is at DEBUG before the stage starts, and stays there
    logging.getLogger("httpx2").setLevel(logging.DEBUG)
    quiet_logs()
    assert logging.getLogger("httpx2").isEnabledFor(logging.INFO)
    # hydra.verbose=true: the root logger at DEBUG, and the request loggers with it
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.DEBUG)
    quiet_logs()
    assert all(logging.getLogger(n).isEnabledFor(logging.INFO) for n in CHATTY_LOGGERS)
