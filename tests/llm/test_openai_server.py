"""The openai backend and the shared wrappers against a real vLLM server (embedded SmolLM2).

Faults come from killing the real server and from a real proxy in front of it.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from hydra import compose, initialize_config_dir

from matrix.common.io import JsonlLog
from matrix.llm.cache import CallCache
from matrix.llm.errors import BadResponse, ContextOverflow, EndpointUnreachable, ModelNotServed
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Sampling
from matrix.llm.roles import Roles
from matrix.llm.server import REPO
from tests.doubles import chats_of
from tests.llm.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.server

QUESTIONS = [
    "Name a fruit.",
    "What colour is the sky on a clear day?",
    "Give one word that rhymes with cat, and explain in a sentence why it rhymes.",
    "List three animals that live in the ocean, and say one thing about each of them.",
]


def backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("api_key_env", None)
    kw.setdefault("retry_max_wait", 2.0)
    return OpenAIBackend("smollm2", base_url=url, **kw)


def server_roles(url: str, cache_dir, **overrides) -> Roles:
    """Roles from the real `llm=smollm2_server` preset, pointed at the test server."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(
            "base",
            overrides=[
                "llm=smollm2_server",
                f"llm.backends.server.base_url={url}",
                f"llm.cache.dir={cache_dir}",
                *[f"{k}={v}" for k, v in overrides.items()],
            ],
        )
    return Roles(cfg.llm)


def test_batch_in_order_with_token_counts(llm_server):
    out = backend(llm_server.base_url).generate(chats_of(*QUESTIONS), Sampling(max_new_tokens=16))
    assert len(out) == len(QUESTIONS)
    # Longer questions have more prompt tokens: rows come back in input order.
    assert [c.prompt_tokens for c in out] == sorted(c.prompt_tokens for c in out)
    assert len({c.prompt_tokens for c in out}) == len(QUESTIONS)
    for c in out:
        assert c.text and c.model == "smollm2"
        assert 0 < c.completion_tokens <= 16 and c.finish_reason in ("stop", "length")


def test_json_mode_constrains_the_answer(llm_server):
    out = backend(llm_server.base_url).generate(
        chats_of("Describe Alice, 30, as JSON with keys name and age."),
        Sampling(
            max_new_tokens=48,
            json_schema={
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
        ),
    )
    value = json.loads(out[0].text)  # the server constrains decoding: the text is the JSON
    assert set(value) >= {"name", "age"} and isinstance(value["age"], int)


def test_raw_completion_continues_the_pre_query_prefix_and_is_cached(llm_server, tmp_path):
    """Magpie-style sampling on the served model: /v1/completions, through the role's cache."""
    gen = server_roles(llm_server.base_url, tmp_path).get("generator")
    prefix = gen.pre_query_prefix()  # from the preset's tokenizer
    assert prefix.endswith("<|im_start|>user\n")
    out = gen.complete([prefix] * 3, max_new_tokens=24, seed=5)
    assert all(c.text and c.prompt_tokens > 0 and 0 < c.completion_tokens <= 24 for c in out)
    assert len({c.text for c in out}) > 1  # the k-th copy is sampled with seed + k
    assert gen.usage.calls == 3
    again = server_roles(llm_server.base_url, tmp_path).get("generator")
    assert again.complete([prefix] * 3, max_new_tokens=24, seed=5) == out
    assert (again.usage.calls, again.usage.cache_hits) == (0, 3)


def test_second_identical_run_sends_nothing_to_the_server(llm_server, tmp_path):
    with FaultProxy(llm_server.base_url.removesuffix("/v1")) as proxy:
        first = server_roles(proxy.base_url, tmp_path)
        a = first.get("responder").generate(chats_of(*QUESTIONS), max_new_tokens=12)
        assert proxy.posts == len(QUESTIONS)
        second = server_roles(proxy.base_url, tmp_path)
        b = second.get("responder").generate(chats_of(*QUESTIONS), max_new_tokens=12)
        assert proxy.posts == len(QUESTIONS)  # zero new requests
    assert [c.text for c in a] == [c.text for c in b]
    led = second.ledger()["roles"]["responder"]
    assert led["calls"] == 0 and led["cache_hits"] == len(QUESTIONS)
    assert first.ledger()["total"]["prompt_tokens"] == sum(c.prompt_tokens for c in a)


def test_wrong_model_name_lists_the_served_ones(llm_server):
    b = OpenAIBackend("llama-3-8b", base_url=llm_server.base_url, api_key_env=None)
    with pytest.raises(ModelNotServed, match="smollm2"):
        b.generate(chats_of("hi"), Sampling(max_new_tokens=4))
    b = OpenAIBackend(
        "llama-3-8b", base_url=llm_server.base_url, api_key_env=None, check_model=False
    )
    with pytest.raises(ModelNotServed, match="smollm2"):  # found from the 404 as well
        b.generate(chats_of("hi"), Sampling(max_new_tokens=4))


def test_context_overflow_names_the_row_or_truncates(llm_server):
    chats = chats_of("short", "word " * 3000)
    with pytest.raises(ContextOverflow, match="row 1:"):
        backend(llm_server.base_url).generate(chats, Sampling(max_new_tokens=8))
    out = backend(llm_server.base_url, overflow="truncate_left").generate(
        chats, Sampling(max_new_tokens=8)
    )
    assert out[1].prompt_tokens <= 2048 and out[1].completion_tokens > 0


def test_5xx_and_429_are_retried_honouring_retry_after(llm_server):
    with FaultProxy(llm_server.base_url.removesuffix("/v1")) as proxy:
        proxy.faults.extend(
            [Fault(status=500), Fault(status=503), Fault(status=429, retry_after=1)]
        )
        out = backend(proxy.base_url).generate(
            chats_of("Name a fruit."), Sampling(max_new_tokens=8)
        )
        assert out[0].text and proxy.posts == 4
        proxy.faults.extend([Fault(status=502)] * 3)
        with pytest.raises(BadResponse, match="HTTP 502"):
            backend(proxy.base_url, max_retries=2).generate(
                chats_of("x"), Sampling(max_new_tokens=4)
            )


def test_timeouts_are_retried(llm_server):
    with FaultProxy(llm_server.base_url.removesuffix("/v1")) as proxy:
        # Margins far above a normal answer (well under a second), so only the delayed
        # request times out even on a loaded machine.
        proxy.faults.append(Fault(delay=25.0))
        out = backend(proxy.base_url, timeout=10.0).generate(
            chats_of("Name a fruit."), Sampling(max_new_tokens=8)
        )
        assert out[0].text and proxy.posts == 2


def test_garbage_is_retried_then_reported(llm_server):
    with FaultProxy(llm_server.base_url.removesuffix("/v1")) as proxy:
        proxy.faults.extend(
            [Fault(garbage=b"<html>oops</html>"), Fault(garbage=b'{"choices": []}')]
        )
        out = backend(proxy.base_url).generate(
            chats_of("Name a fruit."), Sampling(max_new_tokens=8)
        )
        assert out[0].text and proxy.posts == 3
        proxy.faults.extend([Fault(garbage=b'{"id": "x", "choices": []}')] * 3)
        with pytest.raises(BadResponse) as e:
            backend(proxy.base_url, max_retries=2).generate(
                chats_of("x"), Sampling(max_new_tokens=4)
            )
        assert proxy.base_url in str(e.value)


def run_stage(roles: Roles, questions: list[str], out_path, chunk: int) -> None:
    """A stage loop as the generate stage runs it: chunks of rows, appended after each chunk,
    restarting from the rows already on disk."""
    log = JsonlLog(out_path)
    done = log.count()
    for start in range(done - done % chunk, len(questions), chunk):
        part = questions[start : start + chunk]
        outs = roles.get("responder").generate(chats_of(*part), max_new_tokens=24)
        rows = [{"id": start + i, "answer": c.text} for i, c in enumerate(outs)]
        log.append(rows[done - start :] if start < done else rows)
        done = start + len(part)


def test_server_killed_mid_batch_then_restarted_resumes_without_loss_or_duplicates(
    llm_server, tmp_path
):
    questions = [f"Write one sentence about the number {i}." for i in range(12)]
    cache = CallCache.in_dir(tmp_path / "cache")
    out = tmp_path / "answers.jsonl"
    roles = server_roles(
        llm_server.base_url,
        tmp_path / "cache",
        **{
            "llm.backends.server.max_retries": 2,
            "llm.backends.server.retry_max_wait": 1,
            "llm.backends.server.max_concurrency": 2,
        },
    )

    def killer() -> None:  # kill the server once part of the second chunk is answered
        deadline = time.monotonic() + 300
        while len(cache) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        llm_server.kill()

    t = threading.Thread(target=killer)
    t.start()
    with pytest.raises(EndpointUnreachable, match=llm_server.base_url):
        run_stage(roles, questions, out, chunk=6)
    t.join()
    paid_before = len(cache)
    assert 8 <= paid_before < 12  # the kill landed inside the second chunk
    assert JsonlLog(out).count() == 6  # the first chunk was written, the second was not

    llm_server.start()
    llm_server.wait_ready()
    roles = server_roles(llm_server.base_url, tmp_path / "cache")
    run_stage(roles, questions, out, chunk=6)
    rows = JsonlLog(out).read()
    assert [r["id"] for r in rows] == list(range(12))  # none lost, none twice
    led = roles.ledger()["roles"]["responder"]
    # The resumed chunk paid only for the rows the server had not answered before the kill.
    assert led["calls"] == 12 - paid_before and led["cache_hits"] == paid_before - 6
    assert all(r["answer"] for r in rows)


def test_the_server_command_prints_the_override_and_restarts_a_dead_server(tmp_path, monkeypatch):
    """`python -m matrix.llm.server` (what `make llm-server` runs): prints the overrides that
    point the stages at it, starts vLLM again after a crash, and stops it on Ctrl-C."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    from matrix.llm.server_record import server_record
    from tests.conftest import free_port

    monkeypatch.setenv("MATRIX_CACHE", str(tmp_path / "cache"))  # its server record goes here
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    out = tmp_path / "cli.log"
    with open(out, "w") as f:
        cli = subprocess.Popen(
            [sys.executable, "-m", "matrix.llm.server", "--port", str(port), "--max-restarts", "1"],
            stdout=f,
            stderr=subprocess.STDOUT,
            # as a shell starts a background job (`make llm-server &`, nohup): SIGINT ignored.
            # Ctrl-C below must stop it all the same.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )

    def wait_for(predicate, what: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert cli.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what}: {out.read_text()[-3000:]}"
            time.sleep(1)

    try:
        wait_for(lambda: out.read_text().count("Point the stages at it") == 1, "first start")
        assert f"llm.backends.server.base_url={url}" in out.read_text()
        first = server_record(url)["pid"]
        answer = backend(url).generate(chats_of("Name a fruit."), Sampling(max_new_tokens=8))
        assert answer[0].text
        os.killpg(first, signal.SIGKILL)  # a crash: the whole vLLM process group at once
        wait_for(lambda: out.read_text().count("Point the stages at it") == 2, "restart")
        assert server_record(url)["pid"] != first
        answer = backend(url).generate(chats_of("Name a fruit."), Sampling(max_new_tokens=8))
        assert answer[0].text
    finally:
        cli.send_signal(signal.SIGINT)
        try:
            cli.wait(120)
        except subprocess.TimeoutExpired:  # leave nothing running for the tests after this one
            cli.kill()
            rec = server_record(url)
            if rec:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(rec["pid"], signal.SIGKILL)
            raise AssertionError(
                f"Ctrl-C did not stop the server command: {out.read_text()[-3000:]}"
            ) from None
    assert server_record(url) is None  # stopped on purpose: nothing left to diagnose
    # the crash is told as what it was, not as an error quoted by a warning in vLLM's log
    assert out.read_text().count("vLLM was killed by SIGKILL") == 1
    assert "Too many open files" not in out.read_text()
