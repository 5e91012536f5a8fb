"""Errors an LLM call can end in, each worded so the user knows what to change.

Stages catch `BudgetExhausted` to stop cleanly (everything already answered is in the call
cache, so a rerun with a larger budget resumes without paying twice); the others name the
config key, the endpoint or the row to fix.
"""

from __future__ import annotations


class LLMError(RuntimeError):
    """Base class of every error raised by the LLM layer."""


class ContextOverflow(LLMError, ValueError):
    """A prompt (plus max_new_tokens) does not fit the model's context window."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row

    def __reduce__(self):  # keep `row` across processes (data-parallel replicas, shards)
        return (type(self), (str(self), self.row))

    def at_row(self, row: int) -> ContextOverflow:
        """The same error re-addressed to the caller's row index (batches get re-indexed
        when the cache answers part of them)."""
        msg = str(self)
        if self.row is not None:
            msg = msg.replace(f"row {self.row}:", f"row {row}:", 1)
        return ContextOverflow(msg, row)


class EndpointUnreachable(LLMError):
    """No server answers at the configured base_url (after retries)."""


class ServerDied(EndpointUnreachable):
    """The server failed for good: its engine died (HTTP 500s), or it answered HTTP 5xx and
    then stopped answering. The message carries the server's own error and, for a server
    matrix started, its log's last error and the command that restarts it."""


class AllEndpointsDown(EndpointUnreachable):
    """Every endpoint of a backend with several (`base_urls`) is down; the message names
    each endpoint, its last error and the fix."""


class ModelNotServed(LLMError):
    """The server is up but does not serve the configured model name."""


class BadResponse(LLMError):
    """The server answered with something that is not a chat completion (after retries)."""


class BudgetExhausted(LLMError):
    """The next call would take the run past its token or cost budget (llm.budget)."""

    def __init__(self, message: str, spent: dict[str, float], limit: dict[str, float | None]):
        super().__init__(message)
        self.spent = spent
        self.limit = limit

    def __reduce__(self):
        return (type(self), (str(self), self.spent, self.limit))
