"""The one protocol every LLM call in the project goes through.

A backend takes a batch of chats plus sampling parameters and returns one completion per
chat, with token counts. Stages never talk to a backend directly: they ask `Roles` (see
`matrix.llm.roles`) for the LLM of a role (agent, modulator, summarizer, generator,
responder, judge), which wraps the backend with the shared cache and ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Protocol, runtime_checkable

from matrix.common.schema import Count, Natural, Range

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
Chat = list[Message]


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters. temperature == 0 means greedy decoding.

    `json_schema` asks for structured output where the backend can constrain decoding
    (vLLM guided decoding, OpenAI-compatible `response_format`): True for any JSON object,
    a dict for a JSON schema. Backends that cannot constrain ignore it (the text may then
    hold more than the JSON).

    `logprobs` > 0 asks for that many most likely tokens, with their log-probabilities, at each
    generated position (OpenAI-compatible `top_logprobs`; the local HF backend computes them).
    Backends that cannot return them leave `Completion.top_logprobs` empty.
    """

    # the types are also the config schema of every sampling block (matrix.common.schema)
    max_new_tokens: Count = 256
    temperature: Annotated[float, Range(0)] = 0.0
    top_p: Annotated[float, Range(0, 1, open_min=True)] = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    json_schema: dict | bool | None = None
    logprobs: Natural = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    model: str = ""
    # per generated token: {token text: log-probability} of its most likely alternatives, when
    # `Sampling.logprobs` asked for them and the backend can give them; empty otherwise
    top_logprobs: tuple[dict[str, float], ...] = ()

    def __post_init__(self) -> None:
        # a JSON round trip (the call cache) gives a list; keep completions comparable
        if not isinstance(self.top_logprobs, tuple):
            object.__setattr__(self, "top_logprobs", tuple(self.top_logprobs))


@runtime_checkable
class LLM(Protocol):
    """Anything that turns a batch of chats into completions."""

    @property
    def name(self) -> str:
        """Model identifier recorded in row lineage (e.g. a folder or a served model name)."""
        ...

    def generate(self, chats: Sequence[Chat], sampling: Sampling) -> list[Completion]:
        """One completion per chat, in input order. Batches internally as it sees fit.
        A backend that answers rows as they arrive implements `StreamingLLM` as well."""
        ...


@runtime_checkable
class StreamingLLM(Protocol):
    """Optional: a backend that reports each row the moment it is answered (network servers
    answer out of order). The call cache and the ledger then record every answer as it is
    paid for, so a batch killed half-way resumes from where it stopped."""

    def generate_streaming(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        on_result: Callable[[int, Completion], None],
    ) -> list[Completion]:
        """As `LLM.generate`, calling `on_result(index, completion)` as each row arrives."""
        ...


@runtime_checkable
class RawCompleter(Protocol):
    """Optional: a backend that also continues raw text (no chat template applied).

    Magpie-style sampling needs it: the model continues the chat template's pre-query prefix
    and so writes a user turn by itself. Local backends (HFBackend) implement it.
    """

    def pre_query_prefix(self) -> str:
        """The rendered chat template up to where a user's words begin."""
        ...

    def complete(self, prompts: Sequence[str], sampling: Sampling) -> list[Completion]:
        """One continuation per raw prompt, in input order."""
        ...


def constrains_output(backend: object) -> bool:
    """Whether `backend` makes its answers follow `Sampling.json_schema` (its class sets
    `constrains_json = True`: vLLM's guided decoding, an OpenAI-compatible `response_format`).
    A backend that would only ignore the schema (the local HF backend) leaves it unset, so
    callers keep asking in prose and parsing what comes back."""
    return bool(getattr(backend, "constrains_json", False))


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; returns (text, whether a stop string was hit)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)
