"""Any OpenAI-compatible endpoint (vLLM serve, SGLang, llama.cpp server, hosted APIs): chats
on `/v1/chat/completions`, raw text (Magpie-style sampling) on `/v1/completions`.

A batch becomes concurrent requests on one async client, at most `max_concurrency` in
flight (an asyncio semaphore: servers batch concurrent requests themselves, and a cap keeps
hosted rate limits and local memory in check). Timeouts, connection drops, 429 and 5xx are
retried with exponential backoff and jitter, honouring Retry-After; the SDK's own retries are
off so there is one retry policy. Each row is reported through `on_result` the moment it is
answered, so the call cache keeps everything already paid for if the batch dies half-way.
Calls from several threads at once (the simulator's `schedule: groups`) share the cap: at
most `max_concurrency` requests of this backend are in flight in the whole process, and the
waiting ones get free slots in the order of their `request_priority` (matrix.llm.slots).

The API key is read from the environment variable named by `api_key_env` at call time and
never kept on the object, so it cannot reach a config dump, manifest or W&B; it is registered
with matrix.common.secrets, so an error text that echoes it (a 401 body) is masked in logs and errors.

Request bodies and answers: `matrix.llm.openai_payload`; which failures are retried and how
the final error is worded: `matrix.llm.openai_failures`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from matrix.common.secrets import register
from matrix.llm.chat import pre_query_prefix, template_tokenizer
from matrix.llm.errors import BadResponse, ContextOverflow, LLMError, ModelNotServed
from matrix.llm.local_hosts import is_local
from matrix.llm.openai_failures import (
    Garbage,
    engine_dead,
    retry_after,
    retryable,
    server_says,
    snippet,
    unreachable_error,
)
from matrix.llm.openai_payload import (
    Request,
    answered,
    completion_from,
    is_context_error,
    request_body,
    row_samplings,
    truncate_left,
)
from matrix.llm.protocol import Chat, Completion, Sampling
from matrix.llm.slots import PrioritySlots, current_priority

log = logging.getLogger(__name__)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIBackend:
    """Chat and raw text completions from an OpenAI-compatible server. `model` is the name the server serves (`/v1/models`); it is also the model's name in the
    call cache and in row lineage, so give distinct weights distinct served names.
    `overflow`: "error" raises ContextOverflow naming the row; "truncate_left" cuts the start
    of the longest message until the prompt fits (a raw prompt is never cut).
    `tokenizer` (embedded:NAME, a folder or a hub id) and `chat_template` give the served
    model's chat template, read only by `pre_query_prefix` (Magpie-style sampling).
    """

    concurrent_calls = True  # several threads may call generate at once (see _slots)
    # Sampling.json_schema -> `response_format` (matrix.llm.protocol.constrains_output); a
    # server that rejects it: communication.structured_output=off for the modulator
    constrains_json = True

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
        tokenizer: str | None = None,
        chat_template: str | None = None,
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
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self._model_checked = False
        self._last_5xx: str | None = None  # the last HTTP 5xx this server answered
        # process-wide slots: each call runs its own event loop, so the per-call asyncio
        # semaphore alone would let n concurrent calls send n x max_concurrency requests
        # (handed out by request priority: matrix.llm.slots)
        self._slots = PrioritySlots(self.max_concurrency)

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
        if is_local(self.base_url):
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
        asked = retry_after(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return min(asked, self.retry_max_wait)
        return wait_random_exponential(multiplier=0.5, max=self.retry_max_wait)(state)

    def _retrying(self) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            if isinstance(e, openai.APIStatusError) and e.status_code >= 500:
                self._last_5xx = f"HTTP {e.status_code}: {server_says(e)}"
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
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _unreachable(self, e: BaseException) -> LLMError:
        return unreachable_error(
            e, self.base_url, self.timeout, self.max_retries + 1, last_5xx=self._last_5xx
        )

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
        except (openai.APIConnectionError, Garbage) as e:
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
        return self._batch(list(chats), sampling, on_result)

    # `generate`, reporting each row as it arrives (matrix.llm.protocol.StreamingLLM)
    generate_streaming = generate

    def complete(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        on_result: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """One continuation per raw prompt, from `/v1/completions` (matrix.llm.protocol
        .RawCompleter), each reported to `on_result` as it arrives."""
        return self._batch(list(prompts), sampling, on_result)

    complete_streaming = complete  # what the raw stack's bottom calls (wrappers/raw.py)

    def _batch(self, items: list[Request], sampling: Sampling, on_result) -> list[Completion]:
        if not items:
            return []
        # the priority is read here, in the caller's thread: `_run` may run the loop in another
        return _run(self._generate_all(items, sampling, on_result, current_priority()))

    def pre_query_prefix(self) -> str:
        if not self.tokenizer:
            raise LLMError(
                f"{self.model} at {self.base_url}: Magpie-style sampling needs the model's chat "
                "template: set llm.backends.<name>.tokenizer (embedded:NAME, folder or hub id)"
            )
        return pre_query_prefix(template_tokenizer(self.tokenizer, self.chat_template), self.model)

    async def _generate_all(
        self,
        chats: list[Request],
        sampling: Sampling,
        on_result: Callable[[int, Completion], None] | None,
        priority: int | None = None,
    ) -> list[Completion]:
        client = self._client()
        try:
            if self.check_model and not self._model_checked:
                await self._check_model(client)
            sem = asyncio.Semaphore(self.max_concurrency)
            out: list[Completion | None] = [None] * len(chats)
            samplings = row_samplings(chats, sampling)

            async def one(i: int) -> None:
                async with sem:
                    await self._slots.acquire(priority)
                    try:
                        out[i] = await self._complete(client, chats[i], samplings[i], i)
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
            # Read every failed row's exception, not only the first raised: asyncio prints
            # "Task exception was never retrieved" with a traceback for each one left unread.
            errors = [t.exception() for t in tasks if t.done() and not t.cancelled()]
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
            return out  # type: ignore[return-value]
        finally:
            await client.close()

    async def _complete(
        self, client: openai.AsyncOpenAI, chat: Request, sampling: Sampling, row: int
    ) -> Completion:
        for attempt in range(6):  # truncate_left shrinks the prompt at most a few times
            try:
                return await self._complete_once(client, chat, sampling)
            except openai.BadRequestError as e:
                if not is_context_error(e.message):
                    raise LLMError(
                        f"{self.base_url} rejected row {row}: {snippet(e.message)}"
                    ) from e
                if self.overflow == "error" or isinstance(chat, str):
                    raise ContextOverflow(
                        f"row {row}: the prompt does not fit the context of {self.model} "
                        f"with max_new_tokens={sampling.max_new_tokens} (server: "
                        f"{snippet(e.message)}); shorten the prompt, lower max_new_tokens, "
                        "or set the backend's overflow=truncate_left",
                        row=row,
                    ) from e
                chat = truncate_left(chat, e.message or "", sampling.max_new_tokens, attempt)
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
                raise BadResponse(f"{self.base_url}: HTTP 404 {snippet(e.message)}") from e
            except openai.AuthenticationError as e:
                raise LLMError(
                    f"{self.base_url} refused the API key from ${self.api_key_env}: "
                    f"{snippet(e.message)}"
                ) from e
        raise ContextOverflow(f"row {row}: still too long after truncation", row=row)

    async def _complete_once(
        self, client: openai.AsyncOpenAI, chat: Request, sampling: Sampling
    ) -> Completion:
        req = request_body(self.model, chat, sampling, self.extra_body)
        create = (
            client.completions.create if isinstance(chat, str) else client.chat.completions.create
        )
        try:
            async for attempt in self._retrying():
                with attempt:
                    try:
                        resp = await create(**req)
                    except (ValueError, openai.APIResponseValidationError) as e:
                        # A 2xx body that is not JSON, or JSON that is not a completion.
                        raise Garbage(f"{type(e).__name__}: {e}") from e
                    if not answered(resp, chat):
                        raise Garbage(f"no choices in the answer: {snippet(str(resp))}")
        except (openai.APIConnectionError, Garbage) as e:
            raise self._unreachable(e) from e
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                self._last_5xx = f"HTTP {e.status_code}: {server_says(e)}"
            if retryable(e) or engine_dead(e):
                raise self._unreachable(e) from e
            raise
        self._last_5xx = None  # it answers again: a later silence is not "died after 5xx"
        return completion_from(resp, chat, self.model)
