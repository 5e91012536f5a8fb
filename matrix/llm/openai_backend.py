"""Any OpenAI-compatible chat endpoint: vLLM serve, SGLang, llama.cpp server, hosted APIs.

A batch becomes concurrent requests on one async client, at most `max_concurrency` in
flight (an asyncio semaphore: servers batch concurrent requests themselves, and a cap keeps
hosted rate limits and local memory in check). Timeouts, connection drops, 429 and 5xx are
retried with exponential backoff and jitter, honouring Retry-After; the SDK's own retries are
off so there is one retry policy. Each row is reported through `on_result` the moment it is
answered, so the call cache keeps everything already paid for if the batch dies half-way.
Calls from several threads at once (the simulator's `schedule: groups`) share the cap: at
most `max_concurrency` requests of this backend are in flight in the whole process.

The API key is read from the environment variable named by `api_key_env` at call time and
never kept on the object, so it cannot reach a config dump, manifest or W&B; it is registered
with matrix.common.secrets, so an error text that echoes it (a 401 body) is masked in logs and errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from matrix.common.secrets import register, scrub
from matrix.llm.errors import (
    BadResponse,
    ContextOverflow,
    EndpointUnreachable,
    LLMError,
    ModelNotServed,
    ServerDied,
)
from matrix.llm.ledger import CHARS_PER_TOKEN, estimate_prompt_tokens
from matrix.llm.protocol import Chat, Completion, Sampling

log = logging.getLogger(__name__)

_CONTEXT_ERROR = re.compile(r"context length|context_length|maximum context|too long", re.I)
_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)", re.I)
# vLLM: "However, your prompt contains at least 2049 input tokens"; OpenAI: "your messages
# resulted in 9000 tokens"; others: "request has N tokens".
_PROMPT_SIZE = re.compile(r"(?:contains|has|resulted in|requested)(?: at least)? (\d+)", re.I)
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# A 500 that says the server's engine is gone (vLLM: EngineDeadError, "EngineCore encountered
# an issue"): every later request fails the same way, so it is not retried.
_ENGINE_DEAD = re.compile(r"EngineCore encountered|EngineDead|engine (?:is )?dead", re.I)


class _Garbage(Exception):
    """A 2xx answer that is not a chat completion; retried, then reported as BadResponse."""


def _engine_dead(e: BaseException) -> bool:
    return (
        isinstance(e, openai.APIStatusError)
        and e.status_code >= 500
        and bool(_ENGINE_DEAD.search(e.message or ""))
    )


def _retryable(e: BaseException) -> bool:
    if isinstance(e, openai.APIStatusError):
        return (e.status_code == 429 or e.status_code >= 500) and not _engine_dead(e)
    return isinstance(e, openai.APIConnectionError | _Garbage)  # includes APITimeoutError


def _retry_after(e: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), if it did."""
    resp = getattr(e, "response", None)
    if resp is None:
        return None
    h = resp.headers
    if h.get("retry-after-ms"):
        try:
            return float(h["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = h.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server.

    `model` is the name the server serves (`/v1/models`); it is also the model's name in the
    call cache and in row lineage, so give distinct weights distinct served names.
    `overflow`: "error" raises ContextOverflow naming the row; "truncate_left" cuts the start
    of the longest message until the prompt fits.
    """

    concurrent_calls = True  # several threads may call generate at once (see _slots)

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 6,
        retry_max_wait: float = 30.0,
        overflow: str = "error",
        check_model: bool = True,
        extra_body: dict | None = None,
    ):
        if overflow not in ("error", "truncate_left"):
            raise ValueError(f"llm backend overflow={overflow!r}: use 'error' or 'truncate_left'")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_max_wait = float(retry_max_wait)
        self.overflow = overflow
        self.check_model = check_model
        self.extra_body = dict(extra_body or {})
        self._model_checked = False
        self._last_5xx: str | None = None  # the last HTTP 5xx this server answered
        # process-wide slots: each call runs its own event loop, so the per-call asyncio
        # semaphore alone would let n concurrent calls send n x max_concurrency requests
        self._slots = threading.BoundedSemaphore(self.max_concurrency)

    @property
    def name(self) -> str:
        return self.model

    def _api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # local servers started without --api-key accept anything
        key = os.environ.get(self.api_key_env)
        if key:
            register(key)  # scrubbed from logs, the console and error text from now on
            return key
        if any(h in self.base_url for h in _LOCAL_HOSTS):
            return "EMPTY"
        raise LLMError(
            f"the environment variable {self.api_key_env} (llm.backends.*.api_key_env) is not "
            f"set; export it with the API key for {self.base_url}. Keys are never read from "
            "config files."
        )

    def _client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key(), timeout=self.timeout, max_retries=0
        )

    def _wait(self, state: RetryCallState) -> float:
        asked = _retry_after(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return min(asked, self.retry_max_wait)
        return wait_random_exponential(multiplier=0.5, max=self.retry_max_wait)(state)

    def _retrying(self) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            if isinstance(e, openai.APIStatusError) and e.status_code >= 500:
                self._last_5xx = f"HTTP {e.status_code}: {_server_says(e)}"
            log.warning(
                "%s: attempt %d failed (%s); retrying in %.1fs",
                self.base_url,
                state.attempt_number,
                type(e).__name__,
                state.next_action.sleep if state.next_action else 0,
            )

        return AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _diagnosis(self) -> str:
        """What matrix knows about a local server it started: alive or not, its log's last
        error and the command that restarts it (empty for other servers)."""
        if not any(h in self.base_url for h in _LOCAL_HOSTS):
            return ""
        from matrix.llm.server import diagnose  # no import cost for hosted endpoints

        text = diagnose(self.base_url)
        return f" {text}" if text else ""

    def _unreachable(self, e: BaseException) -> LLMError:
        tries = self.max_retries + 1
        if _engine_dead(e):
            return ServerDied(
                f"the server at {self.base_url} died: its engine failed and it answers every "
                f"request with HTTP {e.status_code} ({_server_says(e)}).{self._diagnosis()}"
            )
        if isinstance(e, openai.APITimeoutError):
            return EndpointUnreachable(
                f"{self.base_url} did not answer within timeout={self.timeout}s ({tries} tries). "
                "Raise llm.backends.<name>.timeout, lower max_concurrency, or check the server."
                + self._diagnosis()
            )
        if isinstance(e, openai.APIConnectionError):
            if self._last_5xx is not None:
                return ServerDied(
                    f"the server at {self.base_url} died: it answered {self._last_5xx}, then "
                    f"stopped answering ({tries} tries: {e.__cause__ or e}).{self._diagnosis()}"
                )
            diagnosis = self._diagnosis()
            return EndpointUnreachable(
                f"no server answers at {self.base_url} ({tries} tries: {e.__cause__ or e})."
                + (
                    diagnosis
                    or " Start one (any Hugging Face folder: `make llm-server "
                    "MODEL=path/to/hf_folder`; the embedded model: `python -m "
                    "matrix.llm.server --port 8000`) or point llm.backends.<name>.base_url at a "
                    "running OpenAI-compatible server."
                )
            )
        if isinstance(e, openai.APIStatusError):
            return BadResponse(
                f"{self.base_url} kept failing with HTTP {e.status_code} after {tries} tries: "
                f"{_snippet(e.message)}{self._diagnosis()}"
            )
        return BadResponse(f"{self.base_url} kept answering with garbage ({tries} tries): {e}")

    async def served_models(self, client: openai.AsyncOpenAI | None = None) -> list[str]:
        own = client is None
        client = client or self._client()
        try:
            async for attempt in self._retrying():
                with attempt:
                    page = await client.models.list()
            return sorted(m.id for m in page.data)
        finally:
            if own:
                await client.close()

    async def _check_model(self, client: openai.AsyncOpenAI) -> None:
        try:
            served = await self.served_models(client)
        except (openai.APIConnectionError, _Garbage) as e:
            raise self._unreachable(e) from e
        except openai.APIStatusError:
            return  # some hosted APIs do not list models; the first completion will tell
        if served and self.model not in served:
            raise ModelNotServed(
                f"{self.base_url} does not serve model '{self.model}'; it serves: "
                f"{', '.join(served)}. Set llm.backends.<name>.model to one of these."
            )
        self._model_checked = True

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        on_result: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        if not chats:
            return []
        return _run(self._generate_all(list(chats), sampling, on_result))

    def generate_streaming(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        on_result: Callable[[int, Completion], None],
    ) -> list[Completion]:
        """`generate`, reporting each row as it arrives (matrix.llm.protocol.StreamingLLM)."""
        return self.generate(chats, sampling, on_result)

    async def _generate_all(
        self,
        chats: list[Chat],
        sampling: Sampling,
        on_result: Callable[[int, Completion], None] | None,
    ) -> list[Completion]:
        client = self._client()
        try:
            if self.check_model and not self._model_checked:
                await self._check_model(client)
            sem = asyncio.Semaphore(self.max_concurrency)
            out: list[Completion | None] = [None] * len(chats)

            async def one(i: int) -> None:
                async with sem:
                    while not self._slots.acquire(blocking=False):
                        await asyncio.sleep(0.005)
                    try:
                        out[i] = await self._complete(client, chats[i], sampling, i)
                    finally:
                        self._slots.release()
                if on_result is not None:
                    on_result(i, out[i])

            tasks = [asyncio.ensure_future(one(i)) for i in range(len(chats))]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            # One row failing for good stops the batch: the rows answered so far are already
            # reported (and cached), the rest are cancelled instead of hammering the server.
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
            return out  # type: ignore[return-value]
        finally:
            await client.close()

    def _request(self, chat: Chat, sampling: Sampling) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            "max_tokens": sampling.max_new_tokens,
            "temperature": max(0.0, sampling.temperature),
        }
        if not sampling.greedy:
            req.update(top_p=sampling.top_p, seed=sampling.seed)
        if sampling.stop:
            req["stop"] = list(sampling.stop)
        if sampling.json_schema is True:
            req["response_format"] = {"type": "json_object"}
        elif isinstance(sampling.json_schema, dict):
            req["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": sampling.json_schema},
            }
        if sampling.logprobs > 0:
            req.update(logprobs=True, top_logprobs=sampling.logprobs)
        if self.extra_body:
            req["extra_body"] = self.extra_body
        return req

    async def _complete(
        self, client: openai.AsyncOpenAI, chat: Chat, sampling: Sampling, row: int
    ) -> Completion:
        for attempt in range(6):  # truncate_left shrinks the prompt at most a few times
            try:
                return await self._complete_once(client, chat, sampling)
            except openai.BadRequestError as e:
                if not _CONTEXT_ERROR.search(e.message or ""):
                    raise LLMError(
                        f"{self.base_url} rejected row {row}: {_snippet(e.message)}"
                    ) from e
                if self.overflow == "error":
                    raise ContextOverflow(
                        f"row {row}: the prompt does not fit the context of {self.model} "
                        f"with max_new_tokens={sampling.max_new_tokens} (server: "
                        f"{_snippet(e.message)}); shorten the prompt, lower max_new_tokens, "
                        "or set the backend's overflow=truncate_left",
                        row=row,
                    ) from e
                chat = _truncate_left(chat, e.message or "", sampling.max_new_tokens, attempt)
            except openai.NotFoundError as e:
                try:
                    served = await self.served_models(client)
                except openai.OpenAIError:
                    served = []
                if served and self.model not in served:
                    raise ModelNotServed(
                        f"{self.base_url} does not serve model '{self.model}'; it serves: "
                        f"{', '.join(served)}. Set llm.backends.<name>.model to one of these."
                    ) from e
                raise BadResponse(f"{self.base_url}: HTTP 404 {_snippet(e.message)}") from e
            except openai.AuthenticationError as e:
                raise LLMError(
                    f"{self.base_url} refused the API key from ${self.api_key_env}: "
                    f"{_snippet(e.message)}"
                ) from e
        raise ContextOverflow(f"row {row}: still too long after truncation", row=row)

    async def _complete_once(
        self, client: openai.AsyncOpenAI, chat: Chat, sampling: Sampling
    ) -> Completion:
        req = self._request(chat, sampling)
        try:
            async for attempt in self._retrying():
                with attempt:
                    try:
                        resp = await client.chat.completions.create(**req)
                    except (ValueError, openai.APIResponseValidationError) as e:
                        # A 2xx body that is not JSON, or JSON that is not a completion.
                        raise _Garbage(f"{type(e).__name__}: {e}") from e
                    choices = getattr(resp, "choices", None)
                    if not choices or getattr(choices[0], "message", None) is None:
                        raise _Garbage(f"no choices in the answer: {_snippet(str(resp))}")
        except (openai.APIConnectionError, _Garbage) as e:
            raise self._unreachable(e) from e
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                self._last_5xx = f"HTTP {e.status_code}: {_server_says(e)}"
            if _retryable(e) or _engine_dead(e):
                raise self._unreachable(e) from e
            raise
        self._last_5xx = None  # it answers again: a later silence is not "died after 5xx"
        text = choices[0].message.content or ""
        usage = getattr(resp, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        return Completion(
            text=text.strip(),
            prompt_tokens=int(
                prompt_tokens if prompt_tokens is not None else estimate_prompt_tokens(chat)
            ),
            completion_tokens=int(
                completion_tokens
                if completion_tokens is not None
                else -(-len(text) // CHARS_PER_TOKEN)
            ),
            finish_reason=choices[0].finish_reason or "stop",
            model=self.model,
            top_logprobs=_top_logprobs(choices[0]),
        )


def _server_says(e: openai.APIStatusError) -> str:
    """The server's own message, without the SDK's "Error code: 500 - " prefix."""
    return _snippet(re.sub(r"^Error code: \d+ - ", "", e.message or ""), 200)


def _top_logprobs(choice: Any) -> tuple[dict[str, float], ...]:
    """`choices[0].logprobs.content[*].top_logprobs` as {token: logprob} per generated token
    (empty when the server sent none)."""
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    out = []
    for position in content:
        alts = getattr(position, "top_logprobs", None) or []
        out.append({a.token: float(a.logprob) for a in alts})
    return tuple(out)


def _snippet(text: str | None, n: int = 300) -> str:
    """A server's error text for our messages: one line, at most n chars, secrets masked (a
    401 body may echo the Authorization header)."""
    text = scrub(" ".join((text or "").split()))
    return text if len(text) <= n else text[:n] + "..."


def _truncate_left(chat: Chat, message: str, max_new_tokens: int, attempt: int = 0) -> Chat:
    """Cut the start of the longest message by the overflow the server reported (servers
    may only say "at least N tokens", so the character estimate is used when larger, and
    each further attempt cuts harder); the end of a message is where the question usually is."""
    limit = _CONTEXT_LIMIT.search(message)
    size = next((int(g) for m in _PROMPT_SIZE.finditer(message) for g in m.groups() if g), 0)
    size = max(size, estimate_prompt_tokens(chat))
    keep = 0.75
    if limit:
        room = int(limit.group(1)) - max_new_tokens
        keep = max(0.05, 0.95 * room / max(size, 1))
    keep = min(keep, 0.8 ** (attempt + 1))
    longest = max(range(len(chat)), key=lambda i: len(chat[i].get("content") or ""))
    content = chat[longest].get("content") or ""
    cut = content[len(content) - int(len(content) * keep) :]
    out = [dict(m) for m in chat]
    out[longest]["content"] = cut
    return out
