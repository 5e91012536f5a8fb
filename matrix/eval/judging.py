"""Asking a judge LLM and parsing its verdicts, with one retry and honest failure accounting.

A judgment that does not parse is asked again once (at a small non-zero temperature, since a
greedy judge would repeat itself); if it still does not parse it is recorded with `ok=False` and
benchmarks count it in their scores (as a loss / the lowest grade / an unknown) instead of
dropping it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matrix.llm.protocol import Chat

Parser = Callable[[str], Any]  # returns None when the text holds no verdict


@dataclass(frozen=True)
class Judgment:
    verdict: Any  # parsed value, None when parsing failed twice
    raw: tuple[str, ...]  # every judge answer, first to last
    ok: bool
    # per answer (parallel to `raw`): {token: log-probability} of the most likely first tokens,
    # empty dicts when log-probs were not asked for or the backend returns none
    first_token_logprobs: tuple[dict[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "raw": list(self.raw), "ok": self.ok}
        if any(self.first_token_logprobs):
            out["first_token_logprobs"] = [dict(d) for d in self.first_token_logprobs]
        return out


def judge_batch(
    judge: Any,
    chats: Sequence[Chat],
    parse: Parser,
    retries: int = 1,
    retry_temperature: float = 0.7,
    **sampling: Any,
) -> list[Judgment]:
    """Judge every chat; `judge` is a role LLM (`generate(chats, **overrides)`)."""
    raws: list[list[str]] = [[] for _ in chats]
    firsts: list[list[dict[str, float]]] = [[] for _ in chats]
    verdicts: list[Any] = [None] * len(chats)
    todo = list(range(len(chats)))
    for attempt in range(retries + 1):
        if not todo:
            break
        overrides = dict(sampling)
        if attempt > 0:
            overrides.update(
                temperature=retry_temperature, seed=int(sampling.get("seed", 0)) + attempt
            )
        outs = judge.generate([chats[i] for i in todo], **overrides)
        still = []
        for i, out in zip(todo, outs, strict=True):
            raws[i].append(out.text)
            firsts[i].append(dict(out.top_logprobs[0]) if out.top_logprobs else {})
            v = parse(out.text)
            if v is None:
                still.append(i)
            else:
                verdicts[i] = v
        todo = still
    return [
        Judgment(v, tuple(r), v is not None, tuple(f))
        for v, r, f in zip(verdicts, raws, firsts, strict=True)
    ]


# --- parsers for the upstream judge formats ---------------------------------------------------

_ARENA_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))
ARENA_VERDICTS = frozenset(
    {"A>>B", "A>B", "A=B", "B=A", "A<B", "A<<B", "B>A", "B>>A", "B<A", "B<<A"}
)


def parse_arena_verdict(text: str) -> str | None:
    """arena-hard-auto: the distinct [[..]] labels must agree on one verdict (else try [..])."""
    for pattern in _ARENA_PATTERNS:
        found = {m.strip() for m in pattern.findall(text.upper())}
        found &= ARENA_VERDICTS
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    return None


_RATING = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))


def parse_rating(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """FastChat single-answer grading: `[[rating]]` (falling back to `[rating]`), within range."""
    for pattern in _RATING:
        m = pattern.search(text)
        if m:
            value = float(m.group(1))
            return value if low <= value <= high else None
    return None


def parse_mt101_score(text: str) -> float | None:
    """OpenCompass MT-Bench-101: the first `[n]`, a 1-10 score."""
    m = re.search(r"\[([0-9]+)\]", text)
    if not m:
        return None
    value = float(m.group(1))
    return value if 1 <= value <= 10 else None


def alpaca_first_output_probability(
    first_token_logprobs: dict[str, float],
    numerator: str = "m",
    denominator: Sequence[str] = ("m", "M"),
) -> float | None:
    """P("m") / (P("m") + P("M")) at the judge's first token: AlpacaEval's `logprob_parser`
    (weighted_alpaca_eval_gpt4_turbo, is_binarize=False), the probability that output_1 is better.

    Tokens are compared after stripping whitespace (local tokenizers may return " m"); the
    log-probs of alternatives that strip to the same identifier are added. A token absent from
    the top list has probability 0; None when neither identifier is among them (upstream: NaN).
    """
    by_token: dict[str, float] = {}
    for token, lp in first_token_logprobs.items():
        t = token.strip()
        if t in denominator or t == numerator:
            by_token[t] = float(np.logaddexp(by_token[t], lp)) if t in by_token else lp
    if not by_token:
        return None
    num = by_token.get(numerator, -np.inf)
    den = np.logaddexp.reduce([by_token.get(t, -np.inf) for t in denominator])
    return float(np.exp(num - den))


def parse_alpaca_identifier(text: str) -> str | None:
    """AlpacaEval's classifier prompt answers with one identifier: `m` or `M`."""
    t = text.strip().strip("`'\"").strip()
    token = t.split()[0] if t.split() else ""
    return token if token in ("m", "M") else None


_XSTEST_CLASSES = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")


def parse_refusal_class(text: str) -> str | None:
    t = text.strip().lower()
    for c in _XSTEST_CLASSES:
        if c in t:
            return c
    m = re.match(r"\s*([123])\b", t)
    return _XSTEST_CLASSES[int(m.group(1)) - 1] if m else None
