"""One chat-templating function for generate, train and evaluate, so templates never drift.

`render` turns messages into the exact text a model sees; training's tokenization with
assistant-only labels (matrix.train.tokenize) is built on it.
"""

from __future__ import annotations

from pathlib import Path

from matrix.llm.protocol import Chat

# Templates for base models that ship without one (the paper trains Llama-3-8B base with the
# llama-3 template). Selected by `model.chat_template=llama3|chatml|qwen2_5`; null keeps the
# model's own. The files, in matrix/data/chat_templates/, are the official templates (their
# sources are in SOURCE.md there): shipped, since model hubs may be unreachable.
_TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "data" / "chat_templates"
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


def pre_query_prefix(tokenizer, model: str) -> str:
    """The text the chat template puts before a user's words (Magpie's pre-query prefix).

    Rendered from a one-message chat with a sentinel as the user text and cut at the sentinel,
    so any template (including one that injects a default system prompt) works.
    """
    sentinel = "\x00MAGPIE\x00"
    text = render(tokenizer, [{"role": "user", "content": sentinel}])
    if sentinel not in text:
        raise TemplateError(f"the chat template of {model} drops the user text")
    return text[: text.index(sentinel)]


def template_tokenizer(spec: str, chat_template: str | None = None):
    """The tokenizer of a model spec (embedded:NAME, a folder or a hub id) with `chat_template`
    installed (`set_chat_template`)."""
    from transformers import AutoTokenizer

    from matrix.llm.embedded import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    set_chat_template(tok, chat_template)
    return tok
