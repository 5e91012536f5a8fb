"""Which tokens carry loss: assistant turns only, all of them in multi-turn chats; DPO scores
only the final answer."""

from __future__ import annotations

from matrix.train.examples import tokenize_dpo, tokenize_sft
from matrix.train.tokenize import IGNORE_INDEX

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
]


def labelled_text(tokenizer, seq) -> str:
    return tokenizer.decode([t for t in seq.labels if t != IGNORE_INDEX])


def test_multi_turn_loss_on_every_assistant_turn_only(tokenizer):
    (seq,), stats = tokenize_sft(tokenizer, [{"messages": CHAT}], max_length=512)
    text = labelled_text(tokenizer, seq)
    assert "Blue." in text and "Green, like grass." in text
    for other in ("Be brief", "Name a colour", "Another one", "system", "user"):
        assert other not in text
    assert seq.labels[0] == IGNORE_INDEX
    # labels equal the ids wherever they are set
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(seq.labels, seq.input_ids, strict=True))
    assert stats.truncated_assistant_turns == 0 and stats.kept == 1


def test_truncated_turns_are_counted_and_masked(tokenizer):
    full, _ = tokenize_sft(tokenizer, [{"messages": CHAT}], max_length=512)
    cut_at = len(full[0]) - 3  # inside the last assistant turn
    (seq,), stats = tokenize_sft(tokenizer, [{"messages": CHAT}], max_length=cut_at)
    assert len(seq) == cut_at
    assert stats.truncated_assistant_turns == 1
    text = labelled_text(tokenizer, seq)
    assert "Blue." in text and "Green" not in text


def test_row_without_any_whole_assistant_turn_is_dropped(tokenizer):
    rows = [{"messages": CHAT[:3]}, {"messages": []}]
    seqs, stats = tokenize_sft(tokenizer, rows, max_length=8)
    assert seqs == [] and stats.dropped_no_target == 1 and stats.skipped_malformed == 1


def test_dpo_labels_only_the_answer_not_earlier_assistant_turns(tokenizer):
    row = {
        "prompt": CHAT[:4],
        "chosen": "Red.",
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    (pair,), stats = tokenize_dpo(tokenizer, [row], max_length=512)
    assert labelled_text(tokenizer, pair.chosen).startswith("Red.")
    assert labelled_text(tokenizer, pair.rejected).startswith("No.")
    assert "Blue" not in labelled_text(tokenizer, pair.chosen)
    assert stats.kept == 1
