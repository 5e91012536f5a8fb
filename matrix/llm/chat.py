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
