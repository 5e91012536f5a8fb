"""Prompt templates from config -> chats.

A template is `{system: str | null, user: str}` with `{field}` placeholders filled by
`str.format_map`. Values are inserted verbatim (never re-parsed), so braces in profiles or
model outputs are harmless. Static instructions come first in each template so that servers
with prefix caching reuse them across agents and rounds.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from matrix.common.validation import ConfigError
from matrix.llm.protocol import Chat


class PromptError(ConfigError):
    pass


def template_fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def render_prompt(template: Mapping[str, Any], where: str = "prompt", **values: Any) -> Chat:
    """Fill a {system, user} template. Missing fields raise naming the config key."""
    chat: Chat = []
    for role in ("system", "user"):
        text = template.get(role)
        if not text:
            continue
        missing = template_fields(text) - set(values)
        if missing:
            raise PromptError(
                f"{where}.{role} uses {sorted(missing)}, which this prompt does not provide; "
                f"available: {sorted(values)}"
            )
        chat.append({"role": role, "content": text.format_map(values)})
    if not chat or chat[-1]["role"] != "user":
        raise PromptError(f"{where}: a template needs a non-empty 'user' text")
    return chat
