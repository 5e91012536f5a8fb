"""What goes to an OpenAI-compatible endpoint and what comes back: the request body for a chat
(`/v1/chat/completions`) or a raw text prompt (`/v1/completions`) and a `Sampling`, the
`Completion` read from the answer (token counts estimated where the server sends none), and
the left truncation of a chat the server said is too long."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from matrix.llm.ledger import CHARS_PER_TOKEN, estimate_prompt_tokens
from matrix.llm.protocol import Chat, Completion, Sampling

_CONTEXT_ERROR = re.compile(r"context length|context_length|maximum context|too long", re.I)
_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)", re.I)
# vLLM: "However, your prompt contains at least 2049 input tokens"; OpenAI: "your messages
# resulted in 9000 tokens"; others: "request has N tokens".
_PROMPT_SIZE = re.compile(r"(?:contains|has|resulted in|requested)(?: at least)? (\d+)", re.I)


Request = Chat | str  # a chat, or a raw text prompt to continue


def request_body(
    model: str, item: Request, sampling: Sampling, extra_body: dict | None = None
) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for a chat, or of
    `completions.create` for a raw prompt (`str`)."""
    req: dict[str, Any] = {
        "model": model,
        "max_tokens": sampling.max_new_tokens,
        "temperature": max(0.0, sampling.temperature),
    }
    if isinstance(item, str):
        req["prompt"] = item
        if sampling.logprobs > 0:
            req["logprobs"] = sampling.logprobs
    else:
        req["messages"] = item
        if sampling.logprobs > 0:
            req.update(logprobs=True, top_logprobs=sampling.logprobs)
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
    if extra_body:
        req["extra_body"] = extra_body
    return req


def row_samplings(items: list[Request], sampling: Sampling) -> list[Sampling]:
    """Each row's sampling: the k-th copy of a request in a batch is sampled with seed + k, so
    copies differ as the call cache expects (it keys them apart) and as a local model's one
    random stream gives them (Magpie sends one prompt many times); greedy rows are unchanged."""
    if sampling.greedy:
        return [sampling] * len(items)
    seen: dict[str, int] = {}
    out = []
    for item in items:
        key = json.dumps(item, sort_keys=True)
        k = seen[key] = seen.get(key, -1) + 1
        out.append(replace(sampling, seed=sampling.seed + k) if k else sampling)
    return out


def answered(resp: Any, item: Request) -> bool:
    """Whether `resp` has a first choice of the kind asked for (else the server sent garbage)."""
    choices = getattr(resp, "choices", None)
    if not choices:
        return False
    field = "text" if isinstance(item, str) else "message"
    return getattr(choices[0], field, None) is not None


def completion_from(resp: Any, item: Request, model: str) -> Completion:
    """The first choice of an `answered` `resp` as a Completion."""
    choice = resp.choices[0]
    raw = isinstance(item, str)
    text = (choice.text if raw else choice.message.content) or ""
    prompt_estimate = raw_prompt_tokens(item) if raw else estimate_prompt_tokens(item)
    usage = getattr(resp, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    return Completion(
        text=text.strip(),
        prompt_tokens=int(prompt_tokens if prompt_tokens is not None else prompt_estimate),
        completion_tokens=int(
            completion_tokens if completion_tokens is not None else -(-len(text) // CHARS_PER_TOKEN)
        ),
        finish_reason=choice.finish_reason or "stop",
        model=model,
        top_logprobs=top_logprobs(choice),
    )


def raw_prompt_tokens(prompt: str) -> int:
    return -(-len(prompt) // CHARS_PER_TOKEN)


def top_logprobs(choice: Any) -> tuple[dict[str, float], ...]:
    """`choices[0].logprobs.content[*].top_logprobs` (chat) or `choices[0].logprobs
    .top_logprobs` (raw text) as {token: logprob} per generated token (empty when the server
    sent none)."""
    logprobs = getattr(choice, "logprobs", None)
    if isinstance(getattr(logprobs, "top_logprobs", None), list):  # /v1/completions
        return tuple(
            {t: float(p) for t, p in (alts or {}).items()} for alts in logprobs.top_logprobs
        )
    content = getattr(logprobs, "content", None) or []
    out = []
    for position in content:
        alts = getattr(position, "top_logprobs", None) or []
        out.append({a.token: float(a.logprob) for a in alts})
    return tuple(out)


def is_context_error(message: str | None) -> bool:
    """Whether a 400 says the prompt does not fit the model's context."""
    return bool(_CONTEXT_ERROR.search(message or ""))


def truncate_left(chat: Chat, message: str, max_new_tokens: int, attempt: int = 0) -> Chat:
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
