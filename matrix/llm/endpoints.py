"""Several replicas of one model behind one OpenAI-compatible backend: which endpoint a
request goes to, which endpoints are up, and what each one did.

`base_urls` lists the endpoints (a URL, or `{url, max_concurrency}` to give one its own
cap); `base_url` is the one-endpoint case. A request goes to the up endpoint with the most
room: the lowest share of its `max_concurrency` in flight, then the fewest requests sent.
An endpoint is marked down when a request exhausts the retry policy on it, when its engine
dies, or at once when it refuses or drops a connection while another endpoint is up; its
requests move to the others (matrix.llm.openai_backend). A down endpoint is asked for its
model list again after 1 s, then 2, 4 ... up to `PROBE_MAX_WAIT` s, and taken back when it
answers (a late answer to a request sent before it went down does not count). The wait keeps
doubling across a take-back until the endpoint answers a request: one that lists its models
but fails every completion is taken back after 1, 2, 4 ... s, not every second.

The process-wide request slots (matrix.llm.slots) hold the sum of the up endpoints' caps, so
a request that has a slot finds an up endpoint with room; while every endpoint is down they
keep their last size, so waiting requests get to the point where the error is raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from matrix.common.validation import ConfigError
from matrix.llm.ledger import EndpointUsage
from matrix.llm.slots import PrioritySlots

log = logging.getLogger(__name__)

PROBE_FIRST_WAIT = 1.0  # seconds before a down endpoint is first asked again
PROBE_MAX_WAIT = 60.0


@dataclass(frozen=True)
class EndpointSpec:
    url: str
    max_concurrency: int


def parse_endpoints(
    base_url: str,
    base_urls: Iterable | None,
    max_concurrency: int,
    key: str = "llm.backends.<name>",
) -> list[EndpointSpec]:
    """The endpoints of a backend: `base_urls` when given (each a URL or `{url,
    max_concurrency}`; `max_concurrency` is the default cap of each), else `base_url`.
    Raises ConfigError naming `<key>.base_urls` for a malformed entry."""
    if not base_urls:
        return [EndpointSpec(str(base_url).rstrip("/"), int(max_concurrency))]
    if isinstance(base_urls, str | bytes | Mapping):
        raise ConfigError(
            f"{key}.base_urls must be a list of endpoints, got {base_urls!r}: write "
            f"base_urls=[http://HOST:PORT/v1,...], or set {key}.base_url for one endpoint"
        )
    out: list[EndpointSpec] = []
    for i, item in enumerate(base_urls):
        where = f"{key}.base_urls[{i}]"
        cap: object = max_concurrency
        if isinstance(item, Mapping):
            unknown = set(item) - {"url", "max_concurrency"}
            if unknown or "url" not in item:
                raise ConfigError(
                    f"{where} = {dict(item)!r}: an endpoint is a URL or "
                    "{url: http://HOST:PORT/v1, max_concurrency: N}"
                )
            url, cap = item["url"], item.get("max_concurrency", max_concurrency)
        else:
            url = item
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: {url!r} is not an http(s) URL such as http://HOST:PORT/v1")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(f"{where}.max_concurrency = {cap!r}: give an integer >= 1")
        out.append(EndpointSpec(url.rstrip("/"), cap))
    urls = [e.url for e in out]
    dup = sorted({u for u in urls if urls.count(u) > 1})
    if dup:
        raise ConfigError(f"{key}.base_urls lists {', '.join(dup)} more than once: list each once")
    return out


@dataclass
class Endpoint:
    """One replica's state; changed only under its pool's lock."""

    url: str
    capacity: int
    usage: EndpointUsage = field(default_factory=EndpointUsage)
    in_flight: int = 0
    up: bool = True
    checked: bool = False  # its model list was read and names the backend's model
    last_error: BaseException | None = None
    last_tries: int = 0  # the tries that ended in last_error
    last_5xx: str | None = None  # the last HTTP 5xx it answered since its last good answer
    probe_wait: float = PROBE_FIRST_WAIT
    next_probe: float = 0.0
    probing: bool = False


class EndpointPool:
    """The endpoints of one backend, shared by every thread and event loop that calls it."""

    def __init__(self, specs: list[EndpointSpec]):
        self.endpoints = [Endpoint(s.url, s.max_concurrency) for s in specs]
        self.slots = PrioritySlots(sum(e.capacity for e in self.endpoints))
        self._lock = threading.Lock()

    @property
    def total_capacity(self) -> int:
        return sum(e.capacity for e in self.endpoints)

    def pick(self, exclude: set[str]) -> Endpoint | None:
        """Take a place on the up endpoint with the most room, skipping `exclude` (None:
        none is up). Past its cap only when every up one is full, which the slots prevent
        except for a request that has exhausted the others."""
        with self._lock:
            ups = [e for e in self.endpoints if e.up and e.url not in exclude]
            if not ups:
                return None
            ep = min(
                ups,
                key=lambda e: (
                    e.in_flight >= e.capacity,
                    e.in_flight / e.capacity,
                    e.usage.requests,
                ),
            )
            ep.in_flight += 1
            return ep

    def release(self, ep: Endpoint) -> None:
        with self._lock:
            ep.in_flight -= 1

    def others_up(self, ep: Endpoint) -> bool:
        with self._lock:
            return any(e.up for e in self.endpoints if e is not ep)

    def count(self, ep: Endpoint, **add: int) -> None:
        with self._lock:
            for k, v in add.items():
                setattr(ep.usage, k, getattr(ep.usage, k) + v)

    def mark_down(self, ep: Endpoint, error: BaseException, tries: int) -> None:
        with self._lock:
            ep.last_error, ep.last_tries = error, tries
            if not ep.up:
                return
            ep.up = False
            ep.usage.down += 1
            ep.next_probe = time.monotonic() + ep.probe_wait
            self._resize()
            left = [e.url for e in self.endpoints if e.up]
        log.warning(
            "%s is down (%s: %s); %s",
            ep.url,
            type(error).__name__,
            str(error)[:200],
            f"its requests move to {', '.join(left)}" if left else "no endpoint is up",
        )

    def mark_up(self, ep: Endpoint) -> None:
        """A probe got its model list: back in, and down again only after a longer wait
        unless it answers a request first (`answered`)."""
        with self._lock:
            ep.last_5xx = None
            if ep.up:
                return
            ep.up = True
            ep.probe_wait = min(ep.probe_wait * 2, PROBE_MAX_WAIT)
            self._resize()
        log.warning("%s answers again: requests go to it again", ep.url)

    def answered(self, ep: Endpoint) -> None:
        """A request got its answer there: its next outage is probed from 1 s again."""
        with self._lock:
            ep.last_5xx = None
            ep.probe_wait = PROBE_FIRST_WAIT

    def probe_failed(self, ep: Endpoint, error: BaseException) -> None:
        with self._lock:  # a request's error says more than the probe's, when there is one
            if ep.last_error is None:
                ep.last_error, ep.last_tries = error, 1
            ep.probe_wait = min(ep.probe_wait * 2, PROBE_MAX_WAIT)
            ep.next_probe = time.monotonic() + ep.probe_wait

    def due_probes(self, now_all: bool = False) -> list[Endpoint]:
        """Down endpoints whose next probe is due (every down one with `now_all`), each
        claimed by the caller until `probe_done`."""
        now = time.monotonic()
        with self._lock:
            due = [
                e
                for e in self.endpoints
                if not e.up and not e.probing and (now_all or e.next_probe <= now)
            ]
            for e in due:
                e.probing = True
            return due

    def probe_done(self, ep: Endpoint) -> None:
        with self._lock:
            ep.probing = False

    def _resize(self) -> None:
        """The slots hold the up endpoints' caps; kept as they are while none is up."""
        up = sum(e.capacity for e in self.endpoints if e.up)
        if up:
            self.slots.set_capacity(up)

    def usage(self) -> dict[str, EndpointUsage]:
        with self._lock:
            return {e.url: EndpointUsage(**vars(e.usage)) for e in self.endpoints}
