"""Published dataset formats -> the project's training rows, one converter per format.

The paper compares MATRIX-Gen data with public datasets (ShareGPT, WildChat, Magpie,
UltraFeedback, HH, ...). Each is published in one of a few row formats; `data.format` names the
format of the file being read and `conf/data/<dataset>.yaml` names it for each dataset. A
converter takes one published row and returns the row the trainer reads: `messages` (chat
rows) or `prompt` / `chosen` / `rejected` (preference pairs). It raises `FormatMismatch`
naming the key that does not fit, so a file in another format is reported with the format
expected and the first offending row (matrix.train.source_files).

`columns` (`data.columns`, the map the project's own rows and the custom questions use too)
names a format's keys as a dataset publishes them when it has the same shape under other names
(Glaive's Code-Assistant: `question` / `answer` in the instruction format).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


class FormatMismatch(ValueError):
    """A published row does not have the format's shape; `key` is the field at fault."""

    def __init__(self, key: str, why: str):
        super().__init__(f"`{key}` {why}")
        self.key = key


class SkipRow(Exception):
    """A well-formed row the dataset itself marks as not to train on (BeaverTails' unsafe
    answers); counted, not an error."""


@dataclass(frozen=True)
class Format:
    name: str
    shape: str  # the published row, as the error shows it
    rows: str  # what it converts to natively: "chat" or "pairs"
    convert: Callable[[Row, Mapping[str, str]], Row]
    id_keys: tuple[str, ...]  # the dataset's own row id, the first present
    keys: tuple[str, ...]  # the keys `data.columns` may rename


def _get(raw: Row, columns: Mapping[str, str], key: str, kind: type | tuple = str) -> Any:
    name = columns.get(key, key)
    if name not in raw:
        raise FormatMismatch(name, "is missing")
    value = raw[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FormatMismatch(name, f"should be a {want}, got {type(value).__name__}")
    return value


def _turns(value: list, key: str, role_key: str, text_key: str, roles: Mapping[str, str]):
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise FormatMismatch(f"{key}[{i}]", f"should be an object, got {type(turn).__name__}")
        if turn.get(role_key) not in roles:
            raise FormatMismatch(
                f"{key}[{i}].{role_key}",
                f"is {turn.get(role_key)!r}, not one of {', '.join(sorted(roles))}",
            )
        if not isinstance(turn.get(text_key), str):
            raise FormatMismatch(f"{key}[{i}].{text_key}", "should be a string")
        out.append({"role": roles[turn[role_key]], "content": turn[text_key]})
    return out


SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}
OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


def sharegpt(raw: Row, columns: Mapping[str, str]) -> Row:
    key = columns.get("conversations", "conversations")
    conv = _get(raw, columns, "conversations", list)
    return {"messages": _turns(conv, key, "from", "value", SHAREGPT_ROLES)}


def messages(raw: Row, columns: Mapping[str, str]) -> Row:
    key = columns.get("messages", "messages")
    return {
        "messages": _turns(
            _get(raw, columns, "messages", list), key, "role", "content", OPENAI_ROLES
        )
    }


def wildchat(raw: Row, columns: Mapping[str, str]) -> Row:
    key = columns.get("conversation", "conversation")
    conv = _get(raw, columns, "conversation", list)
    return {"messages": _turns(conv, key, "role", "content", OPENAI_ROLES)}


def alpaca(raw: Row, columns: Mapping[str, str]) -> Row:
    """instruction (+ input, appended after a blank line, as Alpaca's template does) -> output."""
    prompt = _get(raw, columns, "instruction")
    extra = raw.get(columns.get("input", "input"))
    if isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    answer = _get(raw, columns, "output")
    return {"messages": [*_user_turns(raw, columns, prompt), _assistant(answer)]}


def _user_turns(raw: Row, columns: Mapping[str, str], text: str) -> list[dict]:
    """The user's request, after the row's `system` prompt when it has one."""
    system = raw.get(columns.get("system", "system"))
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    return [*head, {"role": "user", "content": text}]


def magpie(raw: Row, columns: Mapping[str, str]) -> Row:
    prompt, answer = _get(raw, columns, "instruction"), _get(raw, columns, "response")
    return {"messages": [{"role": "user", "content": prompt}, _assistant(answer)]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _answer(value: Any, key: str) -> tuple[list[dict], list[dict]]:
    """(the prompt turns it carries, the final assistant turns) of a chosen/rejected value: a
    string is one assistant turn; a message list ends with the answer after its last
    non-assistant turn (UltraFeedback and Argilla repeat the prompt in both lists)."""
    if isinstance(value, str):
        return [], [_assistant(value)]
    if not isinstance(value, list):
        raise FormatMismatch(
            key, f"should be a string or a list of messages, got {type(value).__name__}"
        )
    turns = _turns(value, key, "role", "content", OPENAI_ROLES)
    cut = max((i + 1 for i, m in enumerate(turns) if m["role"] != "assistant"), default=0)
    if cut == len(turns):
        raise FormatMismatch(key, "ends with no assistant turn")
    return turns[:cut], turns[cut:]


def preference(raw: Row, columns: Mapping[str, str]) -> Row:
    """chosen / rejected (strings or message lists) with the prompt turns the chosen list
    carries (UltraFeedback, Argilla: the whole conversation before the answer), else `prompt`
    (a string or messages) or `question` (+ `system`, Orca DPO pairs)."""
    key_c, key_r = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    carried, chosen = _answer(_get(raw, columns, "chosen", (str, list)), key_c)
    _, rejected = _answer(_get(raw, columns, "rejected", (str, list)), key_r)
    prompt = raw.get(columns.get("prompt", "prompt"), raw.get(columns.get("question", "question")))
    if carried:
        prompt = carried
    elif isinstance(prompt, list):
        prompt = _turns(prompt, columns.get("prompt", "prompt"), "role", "content", OPENAI_ROLES)
    elif isinstance(prompt, str):
        prompt = _user_turns(raw, columns, prompt)
    else:
        raise FormatMismatch("prompt", "is missing (nor `question`, nor prompt turns in `chosen`)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_turns(text: str, key: str) -> list[dict]:
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        raise FormatMismatch(key, "is not an HH transcript (\\n\\nHuman: ... \\n\\nAssistant: ...)")
    who = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": who[r], "content": t.strip()}
        for r, t in zip(parts[1::2], parts[2::2], strict=True)
    ]


def hh(raw: Row, columns: Mapping[str, str]) -> Row:
    """Anthropic HH-RLHF: two transcripts sharing every turn but the last assistant one."""
    key_c, key_r = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    chosen = _hh_turns(_get(raw, columns, "chosen"), key_c)
    rejected = _hh_turns(_get(raw, columns, "rejected"), key_r)
    for key, turns in ((key_c, chosen), (key_r, rejected)):
        if turns[-1]["role"] != "assistant":
            raise FormatMismatch(key, "does not end with an Assistant turn")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def safe_rlhf(raw: Row, columns: Mapping[str, str]) -> Row:
    """PKU-SafeRLHF: prompt, response_0 / response_1 and the id of the safer one."""
    prompt = _get(raw, columns, "prompt")
    answers = [_get(raw, columns, "response_0"), _get(raw, columns, "response_1")]
    better = _get(raw, columns, "safer_response_id", int)
    if better not in (0, 1):
        raise FormatMismatch(columns.get("safer_response_id", "safer_response_id"), "is not 0 or 1")
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [_assistant(answers[better])],
        "rejected": [_assistant(answers[1 - better])],
    }


def beavertails(raw: Row, columns: Mapping[str, str]) -> Row:
    """BeaverTails: prompt, response, is_safe; only the safe answers are trained on."""
    prompt, answer = _get(raw, columns, "prompt"), _get(raw, columns, "response")
    if not _get(raw, columns, "is_safe", bool):
        raise SkipRow("is_safe is false")
    return {"messages": [{"role": "user", "content": prompt}, _assistant(answer)]}


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("sharegpt", '{"id", "conversations": [{"from": "human"|"gpt"|"system", "value"}]}', "chat", sharegpt, ("id", "idx"), ("conversations",)),
        Format("messages", '{"id", "messages": [{"role": "user"|"assistant"|"system", "content"}]}', "chat", messages, ("id", "prompt_id"), ("messages",)),
        Format("wildchat", '{"conversation_hash", "conversation": [{"role", "content", ...}]}', "chat", wildchat, ("conversation_hash", "conversation_id"), ("conversation",)),
        Format("alpaca", '{"instruction", "input" (optional), "output"}', "chat", alpaca, ("id", "index"), ("instruction", "input", "output", "system")),
        Format("magpie", '{"uuid", "instruction", "response"}', "chat", magpie, ("uuid",), ("instruction", "response")),
        Format("preference", '{"prompt" | "question", "chosen", "rejected"} (strings or message lists)', "pairs", preference, ("prompt_id", "id"), ("prompt", "question", "system", "chosen", "rejected")),
        Format("hh", '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}', "pairs", hh, (), ("chosen", "rejected")),
        Format("safe_rlhf", '{"prompt", "response_0", "response_1", "safer_response_id"}', "pairs", safe_rlhf, (), ("prompt", "response_0", "response_1", "safer_response_id")),
        Format("beavertails", '{"prompt", "response", "is_safe"}', "chat", beavertails, (), ("prompt", "response", "is_safe")),
    )
}  # fmt: skip
# `data.format` of the project's own rows (generate.py's sft.jsonl / dpo.jsonl): read as they are.
NATIVE = "matrix"


def as_training_row(fmt: Format, raw: Row, columns: Mapping[str, str], rows: str) -> Row:
    """The row of kind `rows` ("chat" or "pairs") from one published row. A pair converts to a
    chat as its prompt followed by the chosen answer (SFT on the preferred answers); a chat
    does not convert to a pair."""
    if not isinstance(raw, dict):
        raise FormatMismatch("(row)", f"should be a JSON object, got {type(raw).__name__}")
    row = fmt.convert(raw, columns)
    if rows == "chat" and "messages" not in row:
        return {"messages": [*row["prompt"], *row["chosen"]]}
    return row


def row_id(fmt: Format, raw: Row, position: str) -> str:
    """The dataset's own id of the row (its first id key present), else its position."""
    for key in fmt.id_keys:
        if isinstance(raw, dict) and raw.get(key) not in (None, ""):
            return str(raw[key])
    return position
