"""Rows on disk -> token sequences ready to batch.

SFT rows hold `messages`; DPO rows hold `prompt` (messages) with `chosen` and `rejected`
(an assistant string or a list of messages). Every conversation goes through
`matrix.chat.tokenize_for_training`, the one function that decides which tokens carry loss,
so training masks exactly what generate and evaluate render.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from matrix.chat import IGNORE_INDEX, TokenizedChat, render, tokenize_for_training


@dataclass(frozen=True)
class Sequence1D:
    """One training sequence: ids and labels (-100 where no loss)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class PreferencePair:
    chosen: Sequence1D
    rejected: Sequence1D


@dataclass
class TokenStats:
    rows: int = 0
    kept: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated_assistant_turns: int = 0
    dropped_no_target: int = 0  # rows left with no assistant token after truncation
    skipped_malformed: int = 0
    notes: list[str] = field(default_factory=list)

    def as_counts(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "rows_kept": self.kept,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "truncated_assistant_turns": self.truncated_assistant_turns,
            "dropped_no_target": self.dropped_no_target,
            "skipped_malformed": self.skipped_malformed,
        }


def _as_messages(value) -> list[dict]:
    """A DPO answer given as a plain string is one assistant message."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [value]
    return list(value)


def _first_token_unlabelled(tc: TokenizedChat) -> Sequence1D:
    # Nothing precedes a sequence's first token, so it is never a target. Masking it keeps a
    # packed row (where the previous sequence's last logit would "predict" it) identical to
    # the unpacked one.
    labels = list(tc.labels)
    if labels:
        labels[0] = IGNORE_INDEX
    return Sequence1D(list(tc.input_ids), labels)


def tokenize_sft(
    tokenizer, rows: Iterable[dict], max_length: int
) -> tuple[list[Sequence1D], TokenStats]:
    stats = TokenStats()
    out: list[Sequence1D] = []
    for row in rows:
        stats.rows += 1
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            stats.skipped_malformed += 1
            continue
        tc = tokenize_for_training(tokenizer, messages, max_length)
        stats.truncated_assistant_turns += tc.truncated_assistant_turns
        seq = _first_token_unlabelled(tc)
        n_trained = sum(1 for x in seq.labels if x != IGNORE_INDEX)
        if n_trained == 0:
            stats.dropped_no_target += 1
            continue
        stats.kept += 1
        stats.tokens += len(seq)
        stats.trained_tokens += n_trained
        out.append(seq)
    return out, stats


def _response_only(tokenizer, prompt: Sequence[dict], answer: list[dict], max_length: int):
    """Tokens of prompt + answer with labels on the answer only (not on assistant turns of a
    multi-turn prompt): DPO compares the log-probability of the two answers alone."""
    tc = tokenize_for_training(tokenizer, list(prompt) + answer, max_length)
    prefix = render(tokenizer, prompt, add_generation_prompt=True)
    n_prompt = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    seq = _first_token_unlabelled(tc)
    labels = [IGNORE_INDEX if t < n_prompt else lab for t, lab in enumerate(seq.labels)]
    return Sequence1D(seq.input_ids, labels), tc.truncated_assistant_turns


def tokenize_dpo(
    tokenizer, rows: Iterable[dict], max_length: int
) -> tuple[list[PreferencePair], TokenStats]:
    stats = TokenStats()
    out: list[PreferencePair] = []
    for row in rows:
        stats.rows += 1
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not prompt or chosen in (None, "", []) or rejected in (None, "", []):
            stats.skipped_malformed += 1
            continue
        c, cut_c = _response_only(tokenizer, prompt, _as_messages(chosen), max_length)
        r, cut_r = _response_only(tokenizer, prompt, _as_messages(rejected), max_length)
        stats.truncated_assistant_turns += cut_c + cut_r
        trained = [sum(1 for x in s.labels if x != IGNORE_INDEX) for s in (c, r)]
        if min(trained) == 0:
            stats.dropped_no_target += 1
            continue
        stats.kept += 1
        stats.tokens += len(c) + len(r)
        stats.trained_tokens += sum(trained)
        out.append(PreferencePair(c, r))
    return out, stats
