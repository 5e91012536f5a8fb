"""How an OpenAI-compatible server's failures are read: which are retried (timeouts,
dropped connections, 429, 5xx, 2xx garbage; not a dead engine), how long the server asked us
to wait, and the error a stage finally raises, worded with what to change (and, for a local
server matrix started, its log's last error and restart command)."""

from __future__ import annotations

import email.utils
import re
import time

import openai

from matrix.common.secrets import scrub
from matrix.llm.errors import (
    AllEndpointsDown,
    BadResponse,
    EndpointUnreachable,
    LLMError,
    ServerDied,
)
from matrix.llm.local_hosts import is_local

# A 500 that says the server's engine is gone (vLLM: EngineDeadError, "EngineCore encountered
# an issue"): every later request fails the same way, so it is not retried.
_ENGINE_DEAD = re.compile(r"EngineCore encountered|EngineDead|engine (?:is )?dead", re.I)


class Garbage(Exception):
    """A 2xx answer that is not a chat completion; retried, then reported as BadResponse."""


def engine_dead(e: BaseException) -> bool:
    return (
        isinstance(e, openai.APIStatusError)
        and e.status_code >= 500
        and bool(_ENGINE_DEAD.search(e.message or ""))
    )


def retryable(e: BaseException) -> bool:
    if isinstance(e, openai.APIStatusError):
        return (e.status_code == 429 or e.status_code >= 500) and not engine_dead(e)
    return isinstance(e, openai.APIConnectionError | Garbage)  # includes APITimeoutError


def retry_after(e: BaseException | None) -> float | None:
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


def snippet(text: str | None, n: int = 300) -> str:
    """A server's error text for our messages: one line, at most n chars, secrets masked (a
    401 body may echo the Authorization header)."""
    text = scrub(" ".join((text or "").split()))
    return text if len(text) <= n else text[:n] + "..."


def server_says(e: openai.APIStatusError) -> str:
    """The server's own message, without the SDK's "Error code: 500 - " prefix."""
    return snippet(re.sub(r"^Error code: \d+ - ", "", e.message or ""), 200)


def diagnosis(base_url: str) -> str:
    """What matrix knows about a local server it started: alive or not, its log's last
    error and the command that restarts it (empty for other servers)."""
    if not is_local(base_url):
        return ""
    from matrix.llm.server_record import diagnose  # no import cost for hosted endpoints

    text = diagnose(base_url)
    return f" {text}" if text else ""


def unreachable_error(
    e: BaseException, base_url: str, timeout: float, tries: int, last_5xx: str | None
) -> LLMError:
    """The error for a request that failed for good after `tries` tries; `last_5xx` is the
    last HTTP 5xx the server answered, if it answered one since its last good answer."""
    if engine_dead(e):
        return ServerDied(
            f"the server at {base_url} died: its engine failed and it answers every "
            f"request with HTTP {e.status_code} ({server_says(e)}).{diagnosis(base_url)}"
        )
    if isinstance(e, openai.APITimeoutError):
        return EndpointUnreachable(
            f"{base_url} did not answer within timeout={timeout}s ({tries} tries). "
            "Raise llm.backends.<name>.timeout, lower max_concurrency, or check the server."
            + diagnosis(base_url)
        )
    if isinstance(e, openai.APIConnectionError):
        if last_5xx is not None:
            return ServerDied(
                f"the server at {base_url} died: it answered {last_5xx}, then "
                f"stopped answering ({tries} tries: {e.__cause__ or e}).{diagnosis(base_url)}"
            )
        return EndpointUnreachable(
            f"no server answers at {base_url} ({tries} tries: {e.__cause__ or e})."
            + (
                diagnosis(base_url)
                or " Start one (any Hugging Face folder: `make llm-server "
                "MODEL=path/to/hf_folder`; the embedded model: `python -m "
                "matrix.llm.server --port 8000`) or point llm.backends.<name>.base_url at a "
                "running OpenAI-compatible server."
            )
        )
    if isinstance(e, openai.APIStatusError):
        return BadResponse(
            f"{base_url} kept failing with HTTP {e.status_code} after {tries} tries: "
            f"{snippet(e.message)}{diagnosis(base_url)}"
        )
    return BadResponse(f"{base_url} kept answering with garbage ({tries} tries): {e}")


def all_down_error(
    model: str,
    endpoints: list[tuple[str, BaseException | None, int, str | None]],
    timeout: float,
) -> AllEndpointsDown:
    """The error when every endpoint of a backend is down: each (url, last error, the tries
    that ended in it, last 5xx) worded as `unreachable_error` words one endpoint, then the fix."""
    lines = []
    for url, e, tries, last_5xx in endpoints:
        if isinstance(e, openai.OpenAIError | Garbage):
            why = str(unreachable_error(e, url, timeout, tries, last_5xx))
        else:
            why = f"{type(e).__name__}: {e}" if e is not None else "no answer"
        lines.append(f"  - {url}: {why}")
    return AllEndpointsDown(
        f"all {len(endpoints)} endpoints serving '{model}' are down:\n"
        + "\n".join(lines)
        + "\nStart them again (one `make llm-server PORT=<port>` each) or remove the dead ones "
        "from llm.backends.<name>.base_urls. Every answer so far is in the call cache: "
        "rerunning the stage pays only for the rest."
    )
