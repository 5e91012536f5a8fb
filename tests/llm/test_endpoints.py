"""Several replicas behind one OpenAI-compatible backend (`base_urls`), over real HTTP: real
servers in this process answer as the scripted model of tests/llm/openai_http.py, hold each
request a while (so several are in flight), and can be killed mid-batch: the listening
socket closes (new connections are refused) and every request in flight is dropped
unanswered, as when a vLLM server dies."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_config
from matrix.llm.endpoints import PROBE_FIRST_WAIT, EndpointPool, parse_endpoints
from matrix.llm.errors import AllEndpointsDown
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Sampling
from matrix.llm.roles import Roles
from tests.llm.conftest import free_port
from tests.llm.openai_http import answer, send_json
from tests.llm.test_preflight import _compose


class Replica:
    """A real OpenAI-compatible server serving "m" on `port`; each POST is held `delay`
    seconds. `answered` counts answers fully sent, `peak` the most requests in flight at
    once, `tries` the POSTs of each row (by its last message); `kill_after=n` kills it as
    soon as it has answered n requests; `fail_with=500` answers every POST with that HTTP
    error while it still lists its models."""

    def __init__(
        self,
        port: int | None = None,
        delay: float = 0.05,
        kill_after: int = 0,
        model: str = "m",
        fail_with: int = 0,
    ):
        self.port, self.model = port or free_port(), model
        self.delay, self.kill_after, self.fail_with = delay, kill_after, fail_with
        self.answered = self.in_flight = self.peak = 0
        self.tries: Counter[str] = Counter()
        self.killed = threading.Event()
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rep = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                models = [{"id": rep.model, "object": "model"}]
                send_json(self, {"object": "list", "data": models})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with rep._lock:
                    rep.in_flight += 1
                    rep.peak = max(rep.peak, rep.in_flight)
                    rep.tries[body["messages"][-1]["content"]] += 1
                try:
                    time.sleep(rep.delay)
                    if rep.fail_with:
                        self.send_error(rep.fail_with, "engine overloaded")
                        return
                    with rep._lock:  # answer, or be dead: decided at one moment
                        dead = rep.killed.is_set()
                        if not dead:
                            rep.answered += 1
                            if rep.answered == rep.kill_after:
                                rep.killed.set()  # the requests in flight now get no answer
                                threading.Thread(target=rep.kill).start()
                    if dead:
                        self.close_connection = True  # dropped: no answer at all
                        return
                    send_json(self, answer(self.path, body))
                finally:
                    with rep._lock:
                        rep.in_flight -= 1

        return Handler

    def start(self) -> Replica:
        self.killed.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def kill(self) -> None:
        with self._lock:
            self.killed.set()
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _chats(n: int, tag: str = "q") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


def _roles(urls: list, **backend) -> Roles:
    cfg = OmegaConf.create(
        {
            "backends": {
                "server": {
                    "_target_": "matrix.llm.openai_backend.OpenAIBackend",
                    "model": "m",
                    "base_urls": urls,
                    "api_key_env": None,
                    "max_retries": 2,
                    "retry_max_wait": 0.2,
                    **backend,
                }
            },
            "roles": {"agent": {"backend": "server", "max_new_tokens": 8}},
            "cache": {"enabled": False},
        }
    )
    return Roles(cfg)


def test_a_replica_killed_mid_batch_loses_no_row_and_answers_none_twice(tmp_path):
    """A is killed after its 6th answer with requests in flight: they and every later row
    go to B; each row is answered once, with its own answer, and the ledger's per-endpoint
    counts are what each server answered."""
    a = Replica(delay=0.2, kill_after=6).start()
    b = Replica(delay=0.05).start()
    try:
        roles = _roles([{"url": a.url, "max_concurrency": 4}, {"url": b.url, "max_concurrency": 4}])
        roles.carry_spend(tmp_path / "llm_spend.json", "k")
        chats = _chats(40)
        reported: list[int] = []
        backend = roles.backend("server")
        done = backend.generate(chats, Sampling(max_new_tokens=8), lambda i, c: reported.append(i))
        out = roles.get("agent").generate(_chats(4, "after"))  # A stays dead: B answers
    finally:
        a.kill()
        b.kill()
    assert a.killed.is_set()
    assert sorted(reported) == list(range(40))  # every row reported, none twice
    assert [c.text for c in done] == [f"chat: q {i}" for i in range(40)]
    assert [c.text for c in out] == [f"chat: after {i}" for i in range(4)]
    ends = roles.ledger()["endpoints"]
    assert ends[a.url]["answered"] == a.answered == 6
    assert ends[b.url]["answered"] == b.answered == 44 - 6
    assert ends[a.url]["down"] == 1 and ends[b.url]["down"] == 0
    assert ends[a.url]["moved"] >= 1  # rows in flight on A when it died went to B
    assert ends[a.url]["failures"] >= ends[a.url]["moved"] and ends[b.url]["failures"] == 0
    assert ends[b.url]["requests"] == b.answered  # B was never asked twice for a row
    assert ends[b.url]["completion_tokens"] == 3 * b.answered  # the server's usage, counted
    spend = json.loads((tmp_path / "llm_spend.json").read_text())
    assert spend["endpoints"][b.url]["answered"] == b.answered  # written after each batch


def test_a_replica_failing_every_completion_costs_a_row_two_tries_not_the_retry_policy():
    """A lists its models (so probes take it back) but answers every completion with a 500:
    each row it gets is tried there twice (one retry for a blip), then moves to B, although
    the retry policy would allow 9 tries."""
    a = Replica(delay=0.01, fail_with=500).start()
    b = Replica(delay=0.05).start()
    try:
        backend = OpenAIBackend(
            "m", base_urls=[a.url, b.url], api_key_env=None, max_retries=8, retry_max_wait=0.2
        )
        done = backend.generate(_chats(12), Sampling(max_new_tokens=8))
    finally:
        a.kill()
        b.kill()
    assert [c.text for c in done] == [f"chat: q {i}" for i in range(12)]
    assert a.answered == 0 and b.answered == 12
    assert a.tries and max(a.tries.values()) <= 2, a.tries
    assert backend.pool.endpoints[0].usage.down >= 1


def test_a_replica_taken_back_waits_longer_each_time_until_it_answers_a_request():
    pool = EndpointPool(parse_endpoints("", ["http://a/v1", "http://b/v1"], 4))
    a = pool.endpoints[0]
    waits = []
    for _ in range(3):  # down, listed its models (taken back), down again ...
        pool.mark_down(a, RuntimeError("HTTP 500"), 2)
        waits.append(a.next_probe - time.monotonic())
        pool.mark_up(a)
    pool.answered(a)
    pool.mark_down(a, RuntimeError("HTTP 500"), 2)
    waits.append(a.next_probe - time.monotonic())
    first = PROBE_FIRST_WAIT
    expected = [first, 2 * first, 4 * first, first]
    assert all(abs(w - e) < 0.5 for w, e in zip(waits, expected, strict=True)), waits


def test_least_loaded_keeps_each_replica_within_its_cap_and_fills_both():
    """Caps 2 and 6: at most that many requests are in flight at each, both reach it, and the
    larger one answers more rows."""
    a, b = Replica(delay=0.1).start(), Replica(delay=0.1).start()
    try:
        backend = OpenAIBackend(
            "m",
            base_urls=[{"url": a.url, "max_concurrency": 2}, {"url": b.url, "max_concurrency": 6}],
            api_key_env=None,
        )
        backend.generate(_chats(48), Sampling(max_new_tokens=8))
    finally:
        a.kill()
        b.kill()
    assert (a.peak, b.peak) == (2, 6)
    assert a.answered + b.answered == 48 and b.answered > a.answered > 0


def test_one_row_at_a_time_alternates_between_idle_replicas():
    a, b = Replica(delay=0).start(), Replica(delay=0).start()
    try:
        backend = OpenAIBackend("m", base_urls=[a.url, b.url], api_key_env=None)
        for chat in _chats(6):
            backend.generate([chat], Sampling(max_new_tokens=8))
    finally:
        a.kill()
        b.kill()
    assert (a.answered, b.answered) == (3, 3)


def test_a_dead_replica_is_taken_back_when_it_answers_again(caplog):
    a, b = Replica(delay=0).start(), Replica(delay=0).start()
    try:
        backend = OpenAIBackend(
            "m", base_urls=[a.url, b.url], api_key_env=None, max_retries=1, retry_max_wait=0.1
        )
        backend.generate(_chats(4), Sampling(max_new_tokens=8))
        a.kill()
        backend.generate(_chats(4, "b only"), Sampling(max_new_tokens=8))
        assert not backend.pool.endpoints[0].up
        answered_before = a.answered
        a.start()  # the same port again
        time.sleep(1.2)  # past the first probe wait
        with caplog.at_level(logging.WARNING, logger="matrix.llm.endpoints"):
            for i in range(5):  # the first batch probes it; each next one may use it
                backend.generate(_chats(8, f"back {i}"), Sampling(max_new_tokens=8))
                if a.answered > answered_before:
                    break
    finally:
        a.kill()
        b.kill()
    assert backend.pool.endpoints[0].up
    assert a.answered > answered_before
    assert f"{a.url} answers again" in caplog.text


def test_every_replica_dead_fails_naming_each_with_its_error_and_the_fix():
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    backend = OpenAIBackend(
        "m", base_urls=urls, api_key_env=None, max_retries=1, retry_max_wait=0.1
    )
    with pytest.raises(AllEndpointsDown) as e:
        backend.generate(_chats(3), Sampling(max_new_tokens=8))
    msg = str(e.value)
    assert "all 2 endpoints serving 'm' are down" in msg
    for url in urls:
        assert f"{url}: no server answers at {url}" in msg
    assert "base_urls" in msg and "call cache" in msg


def test_every_replica_killed_mid_batch_keeps_what_was_answered():
    a = Replica(delay=0.1, kill_after=3).start()
    b = Replica(delay=0.1, kill_after=3).start()
    reported: list[int] = []
    backend = OpenAIBackend(
        "m", base_urls=[a.url, b.url], api_key_env=None, max_retries=1, retry_max_wait=0.1
    )
    try:
        with pytest.raises(AllEndpointsDown, match=a.url):
            backend.generate(
                _chats(30), Sampling(max_new_tokens=8), lambda i, c: reported.append(i)
            )
    finally:
        a.kill()
        b.kill()
    assert len(reported) == len(set(reported)) == a.answered + b.answered == 6


@pytest.mark.parametrize(
    ("base_urls", "says"),
    [
        ("http://127.0.0.1:8000/v1", "must be a list"),
        (["127.0.0.1:8000"], "base_urls[0]: '127.0.0.1:8000' is not an http(s) URL"),
        ([{"url": "http://a/v1", "max_concurrency": 0}], "base_urls[0].max_concurrency = 0"),
        ([{"url": "http://a/v1", "cap": 2}], "base_urls[0] ="),
        (["http://a/v1", "http://a/v1/"], "lists http://a/v1 more than once"),
    ],
)
def test_malformed_endpoint_lists_name_the_entry_and_the_fix(base_urls, says):
    with pytest.raises(ConfigError, match="llm.backends.x.base_urls") as e:
        parse_endpoints("http://127.0.0.1:8000/v1", base_urls, 8, "llm.backends.x")
    assert says in str(e.value)


def test_base_url_alone_is_one_endpoint_and_base_urls_replace_it():
    assert [e.url for e in parse_endpoints("http://h:1/v1/", None, 8)] == ["http://h:1/v1"]
    specs = parse_endpoints(
        "http://h:1/v1", ["http://a/v1", {"url": "http://b/v1", "max_concurrency": 3}], 8
    )
    assert [(e.url, e.max_concurrency) for e in specs] == [("http://a/v1", 8), ("http://b/v1", 3)]


def test_preflight_asks_every_endpoint_and_says_which_are_up(caplog):
    """Hydra's list syntax on the command line; one endpoint down is logged, not an error
    (the backend takes it back when it answers); all down, or a wrong model, is an error."""
    up = Replica(model="llama3-8b-instruct").start()
    wrong = Replica(model="smollm2").start()
    down = f"http://127.0.0.1:{free_port()}/v1"
    key = "llm.backends.llama3_8b_instruct.base_urls"
    try:
        cfg = _compose("experiment=paper_sft_10k", f"{key}=[{up.url},{down}]")
        with caplog.at_level(logging.INFO, logger="matrix.llm.preflight"):
            check_config(cfg, "simulate")
        assert f"1 of 2 endpoints up ({up.url}); down: no server at {down}" in caplog.text
        cfg = _compose("experiment=paper_sft_10k", f"{key}=[{down},{wrong.url}]")
        with pytest.raises(ConfigError) as e:
            check_config(cfg, "simulate")
        assert f"the server at {wrong.url} serves smollm2, not 'llama3-8b-instruct'" in str(e.value)
        other = f"http://127.0.0.1:{free_port()}/v1"
        cfg = _compose("experiment=paper_sft_10k", f"{key}=[{down},{other}]")
        with pytest.raises(ConfigError) as e:
            check_config(cfg, "simulate")
        msg = str(e.value)
        assert f"{key}: none of its 2 endpoints answers" in msg
        assert f"no server at {down}" in msg and f"no server at {other}" in msg
        cfg = _compose("experiment=paper_sft_10k", f"{key}=[{up.url},'{up.url}']")
        with pytest.raises(ConfigError, match="more than once"):
            check_config(cfg, "simulate")
    finally:
        up.kill()
        wrong.kill()


def test_an_endpoint_with_its_own_cap_from_the_command_line(tmp_path):
    cfg = _compose(
        "llm=smollm2_server",
        f"llm.cache.dir={tmp_path}",
        "llm.backends.server.base_urls=[http://127.0.0.1:8001/v1,"
        "{url:'http://127.0.0.1:8002/v1',max_concurrency:3}]",
    )
    backend = Roles(cfg.llm).backend("server")
    caps = [(e.url, e.capacity) for e in backend.pool.endpoints]
    assert caps == [("http://127.0.0.1:8001/v1", 8), ("http://127.0.0.1:8002/v1", 3)]
    assert backend.pool.slots.capacity == 11


def test_shrinking_slots_hand_no_slot_on_until_below_the_new_capacity():
    """An endpoint going down shrinks the slots: a waiter gets a slot only once the holders
    are fewer than the new capacity."""
    import asyncio

    from matrix.llm.slots import PrioritySlots

    async def run() -> list[str]:
        slots, seen = PrioritySlots(2), []
        await slots.acquire()
        await slots.acquire()
        slots.set_capacity(1)

        async def waiter() -> None:
            await slots.acquire()
            seen.append("got")

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.05)
        slots.release()  # 1 holder left: at the new capacity, nothing handed on
        await asyncio.sleep(0.05)
        seen.append("after first release")
        slots.release()
        await asyncio.wait_for(task, 5)
        slots.set_capacity(3)  # grows: two free beside the waiter's
        seen.append(f"free {slots.free}")
        return seen

    assert asyncio.run(run()) == ["after first release", "got", "free 2"]


def test_endpoint_counts_carry_over_a_resume_and_a_stage_logs_one_line_each(tmp_path, caplog):
    from matrix.core.stage import StageRun

    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    spend = tmp_path / "llm_spend.json"
    before = {"answered": 5, "requests": 7, "failures": 2, "moved": 1, "down": 1}
    spend.write_text(json.dumps({"key": "k", "total": {}, "endpoints": {urls[0]: before}}))
    roles = _roles(urls)
    roles.carry_spend(spend, "k")
    roles.get("agent")  # builds the backend; nothing is sent
    ends = roles.ledger()["endpoints"]
    assert ends[urls[0]] == {**dict.fromkeys(ends[urls[0]], 0), **before}
    assert set(ends) == set(urls) and not any(ends[urls[1]].values())
    run = StageRun("simulate", tmp_path, OmegaConf.create({}), "h")
    with caplog.at_level(logging.INFO, logger="matrix.core.stage"):
        run.finish({}, extra={"llm": roles.ledger()})
    lines = [r.message for r in caplog.records if r.message.startswith("LLM endpoint")]
    assert lines[0].startswith(f"LLM endpoint {urls[0]}: 5 rows answered of 7 requests")
    assert "2 failed requests, 1 rows moved away, down 1 times" in lines[0]
    assert len(lines) == 2
