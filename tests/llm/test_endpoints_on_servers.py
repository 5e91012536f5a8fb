"""Two real vLLM servers behind one backend (`base_urls`), one of them SIGKILLed mid-batch:
every row is answered once, by the survivor after the kill, and the ledger counts each
server's rows. The first server is the session's `llm_server`; the second is started here
on a free port, as `make llm-server PORT=...` starts one, and stopped at the end."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from omegaconf import OmegaConf

from matrix.llm.cache import CallCache
from matrix.llm.roles import Roles
from matrix.llm.server import LocalServer
from tests.llm.conftest import free_port

pytestmark = pytest.mark.server

log = logging.getLogger(__name__)


def test_a_server_killed_mid_batch_hands_its_rows_to_the_other(llm_server, tmp_path):
    second = LocalServer(free_port(), log_path=tmp_path / "second.log")
    t0 = time.monotonic()
    second.start()
    try:
        log.warning("second vLLM ready in %.0fs", second.wait_ready())
        urls = [llm_server.base_url, second.base_url]
        cfg = OmegaConf.create(
            {
                "backends": {
                    "server": {
                        "_target_": "matrix.llm.openai_backend.OpenAIBackend",
                        "model": "smollm2",
                        "base_urls": [{"url": u, "max_concurrency": 2} for u in urls],
                        "api_key_env": None,
                        "max_retries": 2,
                        "retry_max_wait": 1,
                    }
                },
                "roles": {"responder": {"backend": "server", "max_new_tokens": 24}},
                "cache": {"enabled": True, "dir": str(tmp_path / "cache")},
            }
        )
        roles = Roles(cfg)
        backend = roles.backend("server")

        def killer() -> None:  # SIGKILL the second server once it has answered 2 rows
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if backend.endpoint_usage()[second.base_url].answered >= 2:
                    second.kill()
                    return
                time.sleep(0.05)

        questions = [f"Write one sentence about the number {i}." for i in range(16)]
        t = threading.Thread(target=killer)
        t.start()
        t1 = time.monotonic()
        answers = roles.get("responder").generate(
            [[{"role": "user", "content": q}] for q in questions], temperature=0.0
        )
        t.join()
        log.warning(
            "16 rows through two servers, one killed, in %.0fs (%.0fs with the second start)",
            time.monotonic() - t1,
            time.monotonic() - t0,
        )
    finally:
        second.stop()
    assert second.proc is None
    assert len(answers) == 16 and all(a.text for a in answers)
    ends = roles.ledger()["endpoints"]
    log.warning("endpoints: %s", ends)
    first, killed = ends[llm_server.base_url], ends[second.base_url]
    assert first["answered"] + killed["answered"] == 16  # each row answered once
    assert killed["answered"] >= 2 and killed["down"] == 1 and killed["moved"] >= 1
    assert first["down"] == 0 and first["failures"] == 0
    assert len(CallCache.in_dir(tmp_path / "cache")) == 16  # one cached answer per row
    assert roles.ledger()["roles"]["responder"]["calls"] == 16
