"""The shipped chat templates of the paper presets (llama3 for Llama-3-8B, chatml and the
official qwen2_5 for Qwen2.5) get the same checks as the SmolLM2 template: they render the
documented format, render every conversation prefix as a prefix of the whole (what assistant
masking relies on), and put the loss on assistant turns only.

The tokenizer is SmolLM2's with each template's special tokens added as single special
tokens, as the models' own tokenizers have them (no hub is reachable for theirs); masking
works on characters and token offsets, so the vocabulary behind the text does not matter."""

from __future__ import annotations

import copy

import pytest

from matrix.llm.chat import TEMPLATES, render, set_chat_template
from matrix.train.examples import tokenize_dpo, tokenize_sft
from matrix.train.tokenize import IGNORE_INDEX, assistant_char_spans

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
]
NO_SYSTEM = CHAT[1:]

SPECIAL = {
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen2_5": ["<|im_start|>", "<|im_end|>"],
}
END = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "qwen2_5": "<|im_end|>"}
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def with_template(tokenizer):
    """name -> (name, a copy of the SmolLM2 tokenizer with that template and its tokens)."""
    made: dict = {}

    def make(name: str):
        if name not in made:
            tok = copy.deepcopy(tokenizer)
            tok.add_tokens(SPECIAL[name], special_tokens=True)
            if name == "llama3":
                tok.bos_token = "<|begin_of_text|>"
            set_chat_template(tok, name)
            made[name] = (name, tok)
        return made[name]

    return make


@pytest.fixture(params=sorted(SPECIAL))
def templated(request, with_template):
    return with_template(request.param)


def test_every_paper_template_is_shipped() -> None:
    assert {"llama3", "chatml", "qwen2_5"} <= set(TEMPLATES)


def test_llama3_renders_metas_documented_format(with_template) -> None:
    _, tok = with_template("llama3")
    # Meta's Llama 3 model card, "Prompt format"
    assert render(tok, CHAT[:3]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|>"
    )
    assert render(tok, CHAT[:2], add_generation_prompt=True).endswith(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # content is trimmed, as the official template does
    assert render(tok, [{"role": "user", "content": "  hi \n"}]).endswith("\n\nhi<|eot_id|>")


@pytest.mark.parametrize("name", ["chatml", "qwen2_5"])
def test_chatml_and_qwen_render_their_formats(with_template, name) -> None:
    _, tok = with_template(name)
    turns = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    text = render(tok, NO_SYSTEM[:2])
    if name == "qwen2_5":  # Qwen's default system prompt when the chat has none
        assert text == f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n" + turns
        assert render(tok, CHAT[:3]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert QWEN_SYSTEM not in render(tok, CHAT[:3])
    else:
        assert text == turns
    assert render(tok, NO_SYSTEM[:1], add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("chat", [CHAT, NO_SYSTEM], ids=["system", "no-system"])
def test_every_prefix_renders_as_a_prefix_of_the_whole(templated, chat) -> None:
    _, tok = templated
    full = render(tok, chat)
    for i in range(1, len(chat) + 1):
        assert full.startswith(render(tok, chat[:i])), f"prefix of {i} messages"
        if i < len(chat) and chat[i]["role"] == "assistant":
            assert full.startswith(render(tok, chat[:i], add_generation_prompt=True))
    _, spans = assistant_char_spans(tok, chat)
    assert [full[a:b] for a, b in spans] == [
        m["content"] + END[templated[0]] + ("\n" if templated[0] != "llama3" else "")
        for m in chat
        if m["role"] == "assistant"
    ]


@pytest.mark.parametrize("chat", [CHAT, NO_SYSTEM], ids=["system", "no-system"])
def test_loss_on_every_assistant_turn_only(templated, chat) -> None:
    name, tok = templated
    (seq,), stats = tokenize_sft(tok, [{"messages": chat}], max_length=512)
    labelled = [t for t in seq.labels if t != IGNORE_INDEX]
    text = tok.decode(labelled)
    assert "Blue." in text and "Green, like grass." in text
    for other in ("Be brief", "Name a colour", "Another one", "system", "user", "Qwen"):
        assert other not in text
    # the end-of-turn marker is trained (the model learns to stop), as one special token
    end_id = tok.convert_tokens_to_ids(END[name])
    assert labelled.count(end_id) == 2
    # headers are never trained
    header_ids = {tok.convert_tokens_to_ids(t) for t in SPECIAL[name] if t != END[name]}
    assert not header_ids & set(labelled)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(seq.labels, seq.input_ids, strict=True))
    assert stats.truncated_assistant_turns == 0 and stats.kept == 1


def test_truncated_turns_are_counted_and_masked(templated) -> None:
    _, tok = templated
    full, _ = tokenize_sft(tok, [{"messages": CHAT}], max_length=512)
    cut_at = len(full[0]) - 3  # inside the last assistant turn
    (seq,), stats = tokenize_sft(tok, [{"messages": CHAT}], max_length=cut_at)
    assert len(seq) == cut_at and stats.truncated_assistant_turns == 1
    text = tok.decode([t for t in seq.labels if t != IGNORE_INDEX])
    assert "Blue." in text and "Green" not in text


def test_dpo_labels_only_the_answer(templated) -> None:
    _, tok = templated
    row = {"prompt": CHAT[:4], "chosen": "Red.", "rejected": "No."}
    (pair,), stats = tokenize_dpo(tok, [row], max_length=512)
    chosen = tok.decode([t for t in pair.chosen.labels if t != IGNORE_INDEX])
    rejected = tok.decode([t for t in pair.rejected.labels if t != IGNORE_INDEX])
    assert chosen.startswith("Red.") and rejected.startswith("No.")
    assert "Blue" not in chosen and stats.kept == 1
