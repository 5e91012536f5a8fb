"""What a modulator is asked for when its backend can constrain decoding, and how long any
routing answer may be.

A group's items (labelled A, B, ...) become one JSON object, a property per label, each
holding the member numbers that notice the item (an enum of the group's member numbers) and a
reason of at most `reason_chars` characters. A backend that constrains decoding (vLLM guided
decoding, an OpenAI-compatible `response_format`) then cannot answer in any other shape, and
its answer is read by `parse_json_routes`; others keep the `LABEL: [ids], reason` lines of
`matrix.sim.routing`. `read_answer` reads either kind; `fallback_cause` says why an item was
left undecided (the per-round counts of matrix.sim.communication.RoutingCounts).

Either way the answer's token budget is sized from the group (`RoutingAnswers.tokens`), so a group
with many items and members is not cut off by one fixed cap: an item takes `item_tokens` (its
label, the syntax around it and a reason of `reason_chars`, about 4 characters a token) plus
`recipient_tokens` per member it may name (a number, a comma, a space), and the whole is
multiplied by `token_margin` (tokenizers differ, and models put whitespace where they like).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.common.validation import ConfigProblems
from matrix.llm.protocol import Chat, Completion
from matrix.sim.routing import Route, answered_labels, parse_routes

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


@dataclass(frozen=True)
class RoutingAnswers:
    """How routing answers are asked for: communication.{structured_output, token_budget,
    item_tokens, recipient_tokens, token_margin, reason_chars}."""

    structured_output: str = "auto"  # auto: under a JSON schema where the backend can; off
    # group: sized from the group by tokens(); role: the role's; auto: group with a schema
    token_budget: str = "auto"
    item_tokens: int = 40  # a label, its JSON or line syntax and a reason of reason_chars
    recipient_tokens: int = 3  # one member number the answer may name
    margin: float = 1.5  # over the sum: tokenizers and the models' whitespace differ
    reason_chars: int = 100  # the longest reason the schema allows

    @classmethod
    def from_config(cls, cfg: Mapping) -> RoutingAnswers:
        d = cls()
        return cls(
            structured_output=str(cfg.get("structured_output", d.structured_output)),
            token_budget=str(cfg.get("token_budget", d.token_budget)),
            item_tokens=int(cfg.get("item_tokens", d.item_tokens)),
            recipient_tokens=int(cfg.get("recipient_tokens", d.recipient_tokens)),
            margin=float(cfg.get("token_margin", d.margin)),
            reason_chars=int(cfg.get("reason_chars", d.reason_chars)),
        )

    @staticmethod
    def check(cfg: Mapping, p: ConfigProblems) -> None:
        """A problem (key communication.<option>) for each bad option."""
        for key, choices in (
            ("structured_output", "auto off"),
            ("token_budget", "auto group role"),
        ):
            value = cfg.get(key, choices.split()[0])
            p.check(
                value in choices.split(),
                f"communication.{key}",
                f"'{value}' is not one of {choices.replace(' ', ', ')}",
            )
        for key, least in (("item_tokens", 1), ("recipient_tokens", 0), ("reason_chars", 1)):
            p.check(
                int(cfg.get(key, least)) >= least, f"communication.{key}", f"must be >= {least}"
            )
        p.check(
            float(cfg.get("token_margin", 1.0)) >= 1.0,
            "communication.token_margin",
            "must be >= 1 (a budget below the estimate cuts answers off)",
        )

    def tokens(self, items: int, members: int) -> int:
        """max_new_tokens for one answer routing `items` items among `members` members."""
        per_item = self.item_tokens + self.recipient_tokens * members
        return math.ceil(self.margin * (4 + items * per_item))  # 4: the braces around it all


def routing_schema(labels: Sequence[str], members: int, reason_chars: int) -> dict:
    """The JSON schema of one group's answer: every label required, each with the member
    numbers (0 .. members-1, at most all of them) and a bounded reason, nothing else."""
    decision = {
        "type": "object",
        "properties": {
            "members": {
                "type": "array",
                "items": {"type": "integer", "enum": list(range(members))},
                "maxItems": members,
            },
            "reason": {"type": "string", "maxLength": reason_chars},
        },
        "required": ["members", "reason"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {label: decision for label in labels},
        "required": list(labels),
        "additionalProperties": False,
    }


def parse_json_routes(
    text: str, labels: Sequence[str], members: int, exclude: Mapping[str, int | None]
) -> tuple[dict[str, Route], set[str]] | None:
    """(usable routes by label, the labels the answer has an entry for), or None when the
    answer is no JSON object (cut off, or a backend that ignored the schema). An entry whose
    `members` is not a list of numbers is answered but unusable; numbers outside the group and
    the item's own actor (`exclude[label]`) are dropped."""
    m = _OBJECT.search(text or "")
    try:
        obj = json.loads(m.group(0)) if m else None
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        return None
    answered = {label for label in labels if label in obj}
    routes: dict[str, Route] = {}
    for label in answered:
        entry = obj[label]
        ids = entry.get("members") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not all(type(x) is int for x in ids):
            continue
        keep = {x for x in ids if 0 <= x < members and x != exclude.get(label)}
        reason = entry.get("reason")
        routes[label] = Route(tuple(sorted(keep)), str(reason or "").strip()[:300])
    return routes, answered


def read_answer(
    text: str, labels: list[str], members: int, exclude: Mapping[str, int | None], structured: bool
) -> tuple[dict[str, Route], set[str]]:
    """(usable routes by label, the labels the answer has an entry for), from a JSON answer
    or from `LABEL: [ids], reason` lines."""
    if structured:
        got = parse_json_routes(text, labels, members, exclude)
        return got if got is not None else ({}, set())
    routes = parse_routes(text, labels, range(members), dict(exclude))
    return routes, answered_labels(text, labels)


def with_hint(chat: Chat, hint: str) -> Chat:
    """The chat with `hint` (communication.prompts.json_hint) added to its last message."""
    if not hint:
        return chat
    last = chat[-1]
    return chat[:-1] + [{**last, "content": f"{last['content']}\n\n{hint}"}]


def fallback_cause(answer: Completion, label: str, answered: set[str], before: str | None) -> str:
    """Why an answer left item `label` undecided: truncated (this answer, or the earlier one
    `before` says, hit its token budget: a retry only repairs), unparseable (its entry, or the
    whole answer, could not be read) or missing (a readable answer without it)."""
    if answer.finish_reason == "length" or before == "truncated":
        return "truncated"
    if label in answered or not answered:
        return "unparseable"
    return "missing"
