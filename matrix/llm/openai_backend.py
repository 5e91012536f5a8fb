"""Any OpenAI-compatible endpoint (vLLM serve, SGLang, llama.cpp server, hosted APIs): chats
on `/v1/chat/completions`, raw text (Magpie-style sampling) on `/v1/completions`.

A batch becomes concurrent requests, at most `max_concurrency` in flight per endpoint
(servers batch concurrent requests themselves, and a cap keeps hosted rate limits and local
memory in check). `base_urls` lists several replicas of the model: each request goes to the
up endpoint with the most room, and one that dies hands its requests to the others
(matrix.llm.endpoints, matrix.llm.openai_routing, which also holds the one retry policy:
timeouts, connection drops, 429 and 5xx retried with exponential backoff and jitter,
honouring Retry-After; the SDK's own retries are off). Each row is reported through
`on_result` the moment it is answered, so the call cache keeps everything already paid for
if the batch dies half-way. Calls from several threads at once (the simulator's `schedule:
groups`) share the caps: the whole process has at most the up endpoints' caps in flight, and
the waiting requests get free slots in the order of their `request_priority`
(matrix.llm.slots).

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

from matrix.common.secrets import register
from matrix.llm.chat import pre_query_prefix, template_tokenizer
from matrix.llm.endpoints import EndpointPool, parse_endpoints
from matrix.llm.errors import BadResponse, ContextOverflow, LLMError, ModelNotServed
from matrix.llm.ledger import EndpointUsage
from matrix.llm.local_hosts import is_local
from matrix.llm.openai_failures import Garbage, snippet
from matrix.llm.openai_payload import (
    Request,
    answered,
    completion_from,
    is_context_error,
    request_body,
    row_samplings,
    truncate_left,
)
from matrix.llm.openai_routing import Clients, Router
from matrix.llm.protocol import Chat, Completion, Sampling
from matrix.llm.slots import current_priority, request_priority

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
    `base_urls` (a list of URLs or `{url, max_concurrency}`) replaces `base_url` with several
    endpoints serving the same model; `max_concurrency` is then each one's default cap.
    """

    concurrent_calls = True  # several threads may call generate at once (see _slots)
    # Sampling.json_schema -> `response_format` (matrix.llm.protocol.constrains_output); a
    # server that rejects it: communication.structured_output=off for the modulator
    constrains_json = True

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        base_urls: list | None = None,
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
        specs = parse_endpoints(base_url, base_urls, max_concurrency)
        self.base_url = specs[0].url  # the first endpoint: the one error texts name alone
        self.base_urls = [e.url for e in specs]
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_max_wait = float(retry_max_wait)
        self.overflow = overflow
        self.check_model = check_model
        self.extra_body = dict(extra_body or {})
        self.tokenizer, self.chat_template = tokenizer, chat_template
        # process-wide: each call runs its own event loop, so a per-call cap alone would let
        # n concurrent calls send n x max_concurrency requests (slots handed out by request
        # priority: matrix.llm.slots; endpoints picked and revived: matrix.llm.endpoints)
        self.pool = EndpointPool(specs)
        self._slots = self.pool.slots
        self._router = Router(self.pool, model, self.timeout, self.max_retries, self.retry_max_wait)

    @property
    def model(self) -> str:
        return self._model

    @model.setter
    def model(self, value: str) -> None:
        # a served folder learns the name its server uses only once it answers
        # (matrix.llm.served_folder): the router checks and sends that name
        self._model = value
        if (router := getattr(self, "_router", None)) is not None:
            router.model = value

    @property
    def name(self) -> str:
        return self.model

    def endpoint_usage(self) -> dict[str, EndpointUsage]:
        """What each endpoint did so far (for the ledger: matrix.llm.roles)."""
        return self.pool.usage()

    def _api_key(self, url: str) -> str:
        if not self.api_key_env:
            return "EMPTY"  # local servers started without --api-key accept anything
        key = os.environ.get(self.api_key_env)
        if key:
            register(key)  # scrubbed from logs, the console and error text from now on
            return key
        if is_local(url):
            return "EMPTY"
        raise LLMError(
            f"the environment variable {self.api_key_env} (llm.backends.*.api_key_env) is not "
            f"set; export it with the API key for {url}. Keys are never read from "
            "config files."
        )

    def _client(self, url: str | None = None) -> openai.AsyncOpenAI:
        url = url or self.base_url
        return openai.AsyncOpenAI(
            base_url=url, api_key=self._api_key(url), timeout=self.timeout, max_retries=0
        )

    def _clients(self) -> Clients:
        for url in self.base_urls:
            self._api_key(url)  # a missing key fails before any request
        return Clients(self._client)

    async def served_models(self, client: openai.AsyncOpenAI | None = None) -> list[str]:
        """The model names the first endpoint (or `client`'s) serves."""
        own = client is None
        client = client or self._client()
        try:
            page = await self._router.on_endpoint(
                self.pool.endpoints[0], client, lambda c: c.models.list()
            )
            return sorted(m.id for m in page.data)
        finally:
            if own:
                await client.close()

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
        clients = self._clients()
        try:
            if self.check_model:
                await self._router.check_models(clients)
            sem = asyncio.Semaphore(self.pool.total_capacity)
            out: list[Completion | None] = [None] * len(chats)
            samplings = row_samplings(chats, sampling)

            async def one(i: int) -> None:
                async with sem:
                    out[i] = await self._complete(clients, chats[i], samplings[i], i)
                if on_result is not None:
                    on_result(i, out[i])

            with request_priority(priority):  # each task's context keeps it (Router.send)
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
            await clients.close()

    async def _complete(
        self, clients: Clients, chat: Request, sampling: Sampling, row: int
    ) -> Completion:
        for attempt in range(6):  # truncate_left shrinks the prompt at most a few times
            try:
                return await self._router.send(clients, self._call(chat, sampling))
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
                    served = await self.served_models(clients.get(self.base_url))
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

    def _call(self, chat: Request, sampling: Sampling):
        """The request for one row, as the router sends it to an endpoint's client."""
        req = request_body(self.model, chat, sampling, self.extra_body)

        async def call(client: openai.AsyncOpenAI) -> Completion:
            create = (
                client.completions.create
                if isinstance(chat, str)
                else client.chat.completions.create
            )
            try:
                resp = await create(**req)
            except (ValueError, openai.APIResponseValidationError) as e:
                # A 2xx body that is not JSON, or JSON that is not a completion.
                raise Garbage(f"{type(e).__name__}: {e}") from e
            if not answered(resp, chat):
                raise Garbage(f"no choices in the answer: {snippet(str(resp))}")
            return completion_from(resp, chat, self.model)

        return call
