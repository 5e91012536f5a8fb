"""Training tokenization: a conversation -> input ids and labels with the loss on assistant
turns only (-100 elsewhere), multi-turn aware. The assistant spans come from rendering the
conversation prefix by prefix (matrix.llm.chat.render), which works for any template whose
rendering of a prefix is a prefix of the full rendering (ChatML, Llama-3, Mistral, Qwen ...);
a template that breaks this is refused with a clear error rather than silently mis-masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from matrix.llm.chat import TemplateError, render
from matrix.llm.protocol import Chat

IGNORE_INDEX = -100


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
