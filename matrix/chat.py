"""One chat-templating function for generate, train and evaluate, so templates never drift.

`render` turns messages into the exact text a model sees. `tokenize_for_training` turns a
conversation into input ids and labels with the loss on assistant turns only (-100
elsewhere), multi-turn aware. The assistant spans come from rendering the conversation
prefix by prefix, which works for any template whose rendering of a prefix is a prefix of
the full rendering (ChatML, Llama-3, Mistral, Qwen ...); a template that breaks this is
refused with a clear error rather than silently mis-masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matrix.llm.protocol import Chat

IGNORE_INDEX = -100

# Templates for base models that ship without one (the paper trains Llama-3-8B base with the
# llama-3 template). Selected by `model.chat_template=llama3|chatml|qwen2_5`; null keeps the
# model's own. The files, in matrix/data/chat_templates/, are the official templates (their
# sources are in SOURCE.md there): shipped, since model hubs may be unreachable.
_TEMPLATE_DIR = Path(__file__).resolve().parent / "data" / "chat_templates"
TEMPLATES: dict[str, str] = {
    p.stem: p.read_text(encoding="utf-8") for p in sorted(_TEMPLATE_DIR.glob("*.jinja"))
}


class TemplateError(ValueError):
    pass


def set_chat_template(tokenizer, name: str | None) -> None:
    """Install a named template (or a raw Jinja string) on the tokenizer; None keeps its own."""
    if name:
        tokenizer.chat_template = TEMPLATES.get(name, name)
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no chat template; set "
            f"model.chat_template to one of {sorted(TEMPLATES)} or to a Jinja template string"
        )


def render(tokenizer, messages: Chat, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


@dataclass(frozen=True)
class TokenizedChat:
    input_ids: list[int]
    labels: list[int]
    truncated_assistant_turns: int = 0  # assistant turns cut by max_length and masked out

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def assistant_char_spans(tokenizer, messages: Chat) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of each assistant turn (end marker included)."""
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not full.startswith(before) or not full.startswith(upto):
            raise TemplateError(
                "the chat template does not render conversation prefixes as prefixes of the "
                "whole conversation, so assistant turns cannot be located; use "
                "model.chat_template=chatml|llama3 or a template with that property"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def tokenize_for_training(
    tokenizer, messages: Sequence[dict], max_length: int | None = None
) -> TokenizedChat:
    """Input ids + labels with loss on assistant turns only.

    Truncation never trains on a half-cut assistant turn: a turn that does not fit whole is
    masked out and counted in `truncated_assistant_turns`.
    """
    full, spans = assistant_char_spans(tokenizer, list(messages))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets = enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    turn_of_token = [-1] * len(ids)
    for t, (s, e) in enumerate(offsets):
        for k, (a, b) in enumerate(spans):
            if s >= a and e <= b and e > s:
                labels[t] = ids[t]
                turn_of_token[t] = k
                break
    cut = 0
    if max_length is not None and len(ids) > max_length:
        kept_turns = set(turn_of_token[:max_length])
        whole = {k for k in kept_turns if k >= 0 and k not in set(turn_of_token[max_length:])}
        cut = len({k for k in turn_of_token if k >= 0} - whole)
        ids, labels, turn_of_token = (
            ids[:max_length],
            labels[:max_length],
            turn_of_token[:max_length],
        )
        labels = [
            lab if turn_of_token[t] in whole else IGNORE_INDEX for t, lab in enumerate(labels)
        ]
    return TokenizedChat(ids, labels, cut)
