"""Where an OpenAI-compatible backend's requests go, and how each is retried and moved.

One retry policy (tenacity) per request and endpoint: timeouts, dropped connections, 429,
5xx and 2xx garbage are retried `max_retries` times with exponential backoff and jitter,
honouring Retry-After. A request that exhausts it, or meets a dead engine, marks the
endpoint down and moves to another up endpoint (matrix.llm.endpoints); a refused or dropped
connection moves it at once while another endpoint is up, so a killed replica costs its
requests one failed try each, and a second 5xx in a row moves it too, so a replica that
lists its models but fails every completion costs them two. A request never goes back to an
endpoint it exhausted, so it ends: answered once, or failed with the error of every endpoint
it could use. Only when none is up (and none answers a probe right then) does the request
fail: with one endpoint, as that endpoint's error (matrix.llm.openai_failures); with several,
`AllEndpointsDown` naming each endpoint, its last error and the fix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from matrix.llm.endpoints import Endpoint, EndpointPool
from matrix.llm.errors import LLMError, ModelNotServed
from matrix.llm.openai_failures import (
    Garbage,
    all_down_error,
    engine_dead,
    retry_after,
    retryable,
    server_says,
    unreachable_error,
)
from matrix.llm.protocol import Completion
from matrix.llm.slots import current_priority

log = logging.getLogger(__name__)

PROBE_GRACE = 1.0  # seconds a batch that is done waits for the probes it started

Call = Callable[[openai.AsyncOpenAI], Awaitable[Any]]


def endpoint_failure(e: BaseException) -> bool:
    """A failure of the endpoint rather than of the request: another endpoint may answer."""
    return retryable(e) or engine_dead(e)


def server_error(e: BaseException | None) -> bool:
    """An HTTP 5xx answer."""
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def refused(e: BaseException | None) -> bool:
    """A refused or dropped connection (not a timeout): nothing is serving there now."""
    return isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError)


class Clients:
    """One client per endpoint for one batch (one event loop), and the probes it started."""

    def __init__(self, make: Callable[[str], openai.AsyncOpenAI]):
        self._make = make
        self._by_url: dict[str, openai.AsyncOpenAI] = {}
        self.probes: set[asyncio.Task] = set()

    def get(self, url: str) -> openai.AsyncOpenAI:
        if url not in self._by_url:
            self._by_url[url] = self._make(url)
        return self._by_url[url]

    async def close(self) -> None:
        if self.probes:  # a probe of a port that refuses ends at once; a silent host is cut
            await asyncio.wait(set(self.probes), timeout=PROBE_GRACE)
        for t in self.probes:
            t.cancel()
        await asyncio.gather(*self.probes, return_exceptions=True)
        for c in self._by_url.values():
            await c.close()


class Router:
    """Sends calls of one backend (`model`) to the endpoints of `pool`."""

    def __init__(
        self,
        pool: EndpointPool,
        model: str,
        timeout: float,
        max_retries: int,
        retry_max_wait: float,
    ):
        self.pool, self.model = pool, model
        self.timeout, self.max_retries, self.retry_max_wait = timeout, max_retries, retry_max_wait

    # -- one endpoint ---------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        asked = retry_after(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return min(asked, self.retry_max_wait)
        return wait_random_exponential(multiplier=0.5, max=self.retry_max_wait)(state)

    def _retrying(self, ep: Endpoint) -> AsyncRetrying:
        def move_on(state: RetryCallState) -> bool:  # stop retrying here: another is up
            e = state.outcome.exception() if state.outcome else None
            # a second 5xx in a row: a replica that lists its models but fails completions
            # would hold the row for the whole retry policy; one retry covers a blip
            again_5xx = state.attempt_number >= 2 and server_error(e)
            return (not ep.up or refused(e) or again_5xx) and self.pool.others_up(ep)

        def before_sleep(state: RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            if isinstance(e, openai.APIStatusError) and e.status_code >= 500:
                ep.last_5xx = f"HTTP {e.status_code}: {server_says(e)}"
            log.warning(
                "%s: attempt %d failed (%s); retrying in %.1fs",
                ep.url,
                state.attempt_number,
                type(e).__name__,
                state.next_action.sleep if state.next_action else 0,
            )

        return AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1) | move_on,
            wait=self._wait,
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def on_endpoint(self, ep: Endpoint, client: openai.AsyncOpenAI, call: Call) -> Any:
        """`call(client)` on `ep` under the retry policy; its last error if it never succeeds."""
        async for attempt in self._retrying(ep):
            with attempt:
                try:
                    result = await call(client)
                except openai.APIStatusError as e:
                    if e.status_code >= 500:
                        ep.last_5xx = f"HTTP {e.status_code}: {server_says(e)}"
                    raise
        self.pool.answered(ep)  # it answers: a later silence is not "died after 5xx"
        return result

    # -- the model list -------------------------------------------------------------------
    async def check_models(self, clients: Clients) -> None:
        """Read each unchecked up endpoint's model list (at a backend's first call): one
        that serves another name is a config error; one that cannot answer is marked down."""
        todo = [e for e in self.pool.endpoints if e.up and not e.checked]
        if not todo:
            return
        found = await asyncio.gather(
            *(self._check(e, clients) for e in todo), return_exceptions=True
        )
        wrong = next((x for x in found if isinstance(x, BaseException)), None)
        if wrong is not None:
            raise wrong
        if not any(e.up for e in self.pool.endpoints):
            raise self.down_error()

    async def _check(self, ep: Endpoint, clients: Clients) -> None:
        tries = _Tries(self.pool, ep, ledger=False)
        try:
            listing = tries.counted(lambda c: c.models.list())
            page = await self.on_endpoint(ep, clients.get(ep.url), listing)
        except (openai.APIConnectionError, Garbage) as e:
            self.pool.mark_down(ep, e, tries.n)
            return
        except openai.APIStatusError as e:
            if endpoint_failure(e):
                self.pool.mark_down(ep, e, tries.n)
            else:  # some hosted APIs do not list models; the first completion will tell
                ep.checked = True
            return
        self._served(ep, sorted(m.id for m in page.data))

    def _served(self, ep: Endpoint, served: list[str]) -> None:
        if served and self.model not in served:
            every = (
                " (every endpoint in base_urls must serve it)"
                if len(self.pool.endpoints) > 1
                else ""
            )
            raise ModelNotServed(
                f"{ep.url} does not serve model '{self.model}'; it serves: "
                f"{', '.join(served)}. Set llm.backends.<name>.model to one of these{every}."
            )
        ep.checked = True

    # -- probes ---------------------------------------------------------------------------
    async def probe(self, ep: Endpoint, clients: Clients) -> bool:
        """Ask a down endpoint for its model list once; take it back if it answers."""
        try:
            client = clients.get(ep.url).with_options(timeout=min(self.timeout, 10.0))
            page = await client.models.list()
            self._served(ep, sorted(m.id for m in page.data))
        except openai.APIStatusError as e:
            if endpoint_failure(e):  # else it answers, but lists no models (hosted APIs)
                self.pool.probe_failed(ep, e)
                return False
        except (openai.OpenAIError, ModelNotServed) as e:
            self.pool.probe_failed(ep, e)
            return False
        finally:
            self.pool.probe_done(ep)
        self.pool.mark_up(ep)
        return True

    def start_due_probes(self, clients: Clients) -> None:
        for ep in self.pool.due_probes():
            task = asyncio.ensure_future(self.probe(ep, clients))
            clients.probes.add(task)
            task.add_done_callback(clients.probes.discard)

    # -- one request, moved between endpoints ---------------------------------------------
    async def send(self, clients: Clients, call: Call) -> Completion:
        """`call` on the endpoint with most room, moved on when that endpoint fails; the
        answer is counted on the endpoint that gave it. It waits for a slot with the
        `request_priority` of its context."""
        priority = current_priority()
        exhausted: set[str] = set()  # endpoints this request used up its retries on
        came_from: Endpoint | None = None
        while True:
            await self.pool.slots.acquire(priority)
            ep = None
            try:
                ep = self.pool.pick(exhausted) or await self._revive(clients, exhausted)
                if came_from is not None and came_from is not ep:
                    self.pool.count(came_from, moved=1)
                self.start_due_probes(clients)
                tries = _Tries(self.pool, ep)
                try:
                    out = await self.on_endpoint(ep, clients.get(ep.url), tries.counted(call))
                except Exception as e:
                    if not endpoint_failure(e):
                        raise
                    self.pool.mark_down(ep, e, tries.n)
                    if tries.n > self.max_retries or engine_dead(e):
                        exhausted.add(ep.url)
                    came_from = ep
                    continue
                self.pool.count(
                    ep,
                    answered=1,
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens,
                )
                return out
            finally:
                if ep is not None:
                    self.pool.release(ep)
                self.pool.slots.release()

    async def _revive(self, clients: Clients, exhausted: set[str]) -> Endpoint:
        """No usable endpoint is up: probe the down ones this request may still use, now."""
        for ep in self.pool.due_probes(now_all=True):
            if ep.url in exhausted:
                self.pool.probe_done(ep)
            else:
                await self.probe(ep, clients)
        ep = self.pool.pick(exhausted)
        if ep is None:
            raise self.down_error()
        return ep

    def down_error(self) -> LLMError:
        """The error when no endpoint answers: with one, that endpoint's own error."""
        eps = self.pool.endpoints
        if len(eps) == 1:
            return unreachable_error(
                eps[0].last_error or LLMError("no answer"),
                eps[0].url,
                self.timeout,
                eps[0].last_tries or self.max_retries + 1,
                last_5xx=eps[0].last_5xx,
            )
        return all_down_error(
            self.model, [(e.url, e.last_error, e.last_tries, e.last_5xx) for e in eps], self.timeout
        )


class _Tries:
    """Counts the tries of one row on one endpoint, and in its ledger the requests sent and
    the failed ones."""

    def __init__(self, pool: EndpointPool, ep: Endpoint, ledger: bool = True) -> None:
        self.pool, self.ep, self.n, self.ledger = pool, ep, 0, ledger

    def counted(self, call: Call) -> Call:
        async def run(client: openai.AsyncOpenAI) -> Any:
            self.n += 1
            if self.ledger:
                self.pool.count(self.ep, requests=1)
            try:
                return await call(client)
            except Exception:
                if self.ledger:
                    self.pool.count(self.ep, failures=1)
                raise

        return run
