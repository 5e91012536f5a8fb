"""A real HTTP proxy in front of a real OpenAI-compatible server that injects faults.

Each POST takes the next fault from `faults` (none left: plain forwarding): an HTTP status
(with an optional Retry-After), a delay before forwarding (client timeouts), or a 200 whose
body is garbage. GETs (model listing) pass through. `posts` counts forwarded-or-faulted POSTs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass(frozen=True)
class Fault:
    status: int | None = None  # answer with this status and an error body
    retry_after: float | None = None
    delay: float = 0.0  # sleep before forwarding
    garbage: bytes | None = None  # answer 200 with this body


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000
        self.faults: deque[Fault] = deque()
        self.posts = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _forward(self, method: str, body: bytes | None) -> None:
                try:
                    r = httpx.request(
                        method,
                        proxy.upstream + self.path,
                        content=body,
                        headers={"content-type": "application/json"},
                        timeout=300,
                    )
                except httpx.HTTPError:
                    self._send(502, b'{"error": {"message": "upstream down"}}')
                    return
                self._send(r.status_code, r.content)

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                self._forward("GET", None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy._lock:
                    proxy.posts += 1
                    fault = proxy.faults.popleft() if proxy.faults else None
                if fault is None:
                    self._forward("POST", body)
                elif fault.status is not None:
                    headers = {}
                    if fault.retry_after is not None:
                        headers["retry-after"] = str(fault.retry_after)
                    msg = b'{"error": {"message": "injected fault", "type": "server_error"}}'
                    self._send(fault.status, msg, headers)
                elif fault.garbage is not None:
                    self._send(200, fault.garbage)
                else:
                    time.sleep(fault.delay)
                    self._forward("POST", body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
