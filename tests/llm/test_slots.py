"""Request slots shared across threads and event loops, handed out by priority."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Sampling
from matrix.llm.slots import PrioritySlots, current_priority, request_priority
from tests.llm.openai_http import answer, send_json


def test_waiters_get_freed_slots_lowest_priority_first_then_in_arrival_order():
    slots = PrioritySlots(1)
    order: list[str] = []

    async def main():
        await slots.acquire()  # the one slot is taken: everyone below waits

        async def waiter(name, prio):
            await slots.acquire(prio)
            order.append(name)
            await asyncio.sleep(0)
            slots.release()

        tasks = []
        for name, prio in (("r2", 20), ("r1-late", 10), ("none", None), ("r1", 10), ("r0", 0)):
            tasks.append(asyncio.ensure_future(waiter(name, prio)))
            await asyncio.sleep(0)  # each is queued before the next arrives
        slots.release()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == ["none", "r0", "r1-late", "r1", "r2"]
    assert slots.free == 1


def test_a_cancelled_waiter_passes_its_slot_on():
    slots = PrioritySlots(1)

    async def main():
        await slots.acquire()
        doomed = asyncio.ensure_future(slots.acquire(0))
        later = asyncio.ensure_future(slots.acquire(5))
        await asyncio.sleep(0)
        doomed.cancel()
        slots.release()
        await asyncio.wait_for(later, 5)  # would hang if the cancelled waiter kept the slot
        slots.release()

    asyncio.run(main())
    assert slots.free == 1


def test_threads_with_their_own_loops_never_exceed_the_capacity():
    slots = PrioritySlots(3)
    in_flight, peak, lock = [0], [0], threading.Lock()

    async def one(prio):
        await slots.acquire(prio)
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.002)
        with lock:
            in_flight[0] -= 1
        slots.release()

    def worker(k):
        async def batch():
            await asyncio.gather(*(one((k * 7 + i) % 5) for i in range(20)))

        asyncio.run(batch())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == 3 and slots.free == 3


def test_request_priority_is_per_block_and_per_thread():
    seen = {}
    with request_priority(7):
        t = threading.Thread(target=lambda: seen.update(other=current_priority()))
        t.start()
        t.join()
        seen["here"] = current_priority()
    assert seen == {"here": 7, "other": None} and current_priority() is None


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        PrioritySlots(0)


class _Recorder(BaseHTTPRequestHandler):
    """The scripted OpenAI-compatible chat endpoint (tests/llm/openai_http.py), recording the
    order requests arrive in; the request "slow" is held until `release` is set."""

    arrived: list[str] = []
    release = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        type(self).arrived.append(text)
        if text == "slow":
            type(self).release.wait(30)
        send_json(self, answer(self.path, body))

    def log_message(self, *args) -> None:
        pass


def _wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_the_openai_backend_sends_waiting_requests_by_priority():
    """One slot, held by a slow request; a request of priority 5 starts waiting, then one of
    priority 1: the server receives the priority-1 request first."""
    _Recorder.arrived, _Recorder.release = [], threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    backend = OpenAIBackend(
        "m", base_url=url, api_key_env=None, max_concurrency=1, check_model=False
    )

    def ask(text: str, priority: int | None) -> None:
        with request_priority(priority):
            backend.generate([[{"role": "user", "content": text}]], Sampling(max_new_tokens=4))

    threads = [threading.Thread(target=ask, args=("slow", None))]
    threads[0].start()
    _wait_for(lambda: _Recorder.arrived == ["slow"])
    for n, (text, prio) in enumerate((("later", 5), ("sooner", 1)), start=1):
        threads.append(threading.Thread(target=ask, args=(text, prio)))
        threads[-1].start()
        _wait_for(lambda n=n: len(backend._slots._waiters) == n)
    _Recorder.release.set()
    for t in threads:
        t.join(30)
    server.shutdown()
    assert _Recorder.arrived == ["slow", "sooner", "later"]
