"""Rows on disk -> token sequences ready to batch.

SFT rows hold `messages`; DPO rows hold `prompt` (messages) with `chosen` and `rejected`
(an assistant string or a list of messages). Every conversation goes through
`matrix.llm.chat.tokenize_for_training`, the one function that decides which tokens carry loss,
so training masks exactly what generate and evaluate render.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.common.bad_rows import BadRows
from matrix.common.columns import apply_columns, column_map_problem, propose_columns
from matrix.common.tables import Table, open_table
from matrix.common.validation import ConfigError
from matrix.llm.chat import render
from matrix.train.tokenize import IGNORE_INDEX, TokenizedChat, tokenize_for_training


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


ROLES = ("system", "user", "assistant")


def _messages_problem(value: Any, key: str) -> str | None:
    if not isinstance(value, list):
        return f"`{key}` should be a list of {{role, content}} messages, got {type(value).__name__}"
    if not value:
        return f"`{key}` is empty"
    for i, m in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            return f"`{where}` should be an object {{role, content}}, got {type(m).__name__}"
        if m.get("role") not in ROLES:
            return f"`{where}.role` is {m.get('role')!r}, not one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"`{where}.content` should be a string, got {type(m.get('content')).__name__}"
        if not m["content"].strip():
            return f"`{where}.content` is empty"
    return None


def _answer_problem(value: Any, key: str) -> str | None:
    """A DPO answer: an assistant string, one message, or a list of messages."""
    if isinstance(value, str):
        return None if value.strip() else f"`{key}` is empty"
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return f"`{key}` should be a string or a list of messages, got {type(value).__name__}"
    return _messages_problem(value, key)


# The rows an objective trains on (`CausalLMModule.rows`) and the fields each row needs.
ROW_FIELDS = {"chat": ("messages",), "pairs": ("prompt", "chosen", "rejected")}
ROW_KINDS = tuple(ROW_FIELDS)


def row_problem(row: Any, kind: str) -> str | None:
    """Why a row on disk cannot be trained on (the field and what it should be), or None.

    `kind` "chat" rows need `messages` with an assistant turn; "pairs" rows `prompt` (a string
    or messages), `chosen` and `rejected`. Every message has a role of ROLES and non-blank
    text.
    """
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    fields = ROW_FIELDS[kind]
    missing = [k for k in fields if k not in row]
    if missing:
        return f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if kind == "chat":
        why = _messages_problem(row["messages"], "messages")
        if why is None and not any(m["role"] == "assistant" for m in row["messages"]):
            why = "no assistant message in `messages` (nothing to train on)"
        return why
    prompt = row["prompt"]
    if isinstance(prompt, str):
        why = None if prompt.strip() else "`prompt` is empty"
    else:
        why = _messages_problem(prompt, "prompt")
    return (
        why
        or _answer_problem(row["chosen"], "chosen")
        or _answer_problem(row["rejected"], "rejected")
    )


# Column names other datasets use for each field, best first (`data.columns` proposals).
SYNONYMS = {
    "messages": ("messages", "conversations", "conversation", "chat", "dialog", "turns"),
    "prompt": ("prompt", "instruction", "question", "query", "input"),
    "chosen": ("chosen", "preferred", "winner", "responsechosen", "chosenresponse"),
    "rejected": ("rejected", "dispreferred", "loser", "responserejected", "rejectedresponse"),
}


def columns_problem(table: Table, kind: str, columns: Mapping[str, str | None]) -> str | None:
    """Why `data.columns` does not fit the table's columns for `kind` rows (the file's columns
    and a proposed map), or None (`matrix.common.columns`, the profile loader's mechanism)."""
    fields = ROW_FIELDS[kind]
    mapping = {f: columns.get(f) or f for f in fields}
    have = table.columns()
    proposal = propose_columns(have, fields, SYNONYMS)
    problem = column_map_problem(table.spec, have, mapping, "data.columns", proposal, bool)
    return problem[0] if problem else None


def load_rows(
    path: str | Path,
    kind: str,
    on_error: str = "skip",
    max_line_bytes: int | None = None,
    limit: int | None = None,
    split: str | None = None,
    columns: Mapping[str, str | None] | None = None,
) -> tuple[list[dict], BadRows]:
    """The trainable rows of a table (`matrix.common.tables`: JSONL, parquet, a folder of data
    files, a save_to_disk folder or a cached dataset; the first `limit` rows), columns renamed
    by `columns` (data.columns); every malformed row is named with its place and skipped or
    fatal per `on_error` (data.on_error)."""
    table = open_table(path, "data.path", split)
    mapping = {f: c for f, c in (columns or {}).items() if f in ROW_FIELDS[kind]}
    if any(c != f for f, c in mapping.items()) and (why := columns_problem(table, kind, mapping)):
        raise ConfigError(why)
    bad = BadRows(table.path, on_error, "data.on_error")
    rows: list[dict] = []
    lines = 0
    for part, _, n, row, error in table.file_rows(max_line_bytes):
        lines += 1
        if error is None and isinstance(row, dict):
            row = apply_columns(row, mapping)
        why = error or row_problem(row, kind)
        if why:
            bad.add(table.where(part, n), why)
            continue
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    bad.summary(lines)
    return rows, bad


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
        if row_problem(row, "chat"):
            stats.skipped_malformed += 1
            continue
        tc = tokenize_for_training(tokenizer, row["messages"], max_length)
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
        if row_problem(row, "pairs"):
            stats.skipped_malformed += 1
            continue
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
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
