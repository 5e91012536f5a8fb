"""Row filters. Each candidate gets at most one reason to be dropped; every reason is
counted and shown in the data card.

Per-row checks run first (empty, unparseable, too short, overlong, truncated, refusal,
language, DPO chosen == rejected), then duplicates against everything already accepted
(exact after normalisation, then near-duplicates by embedding cosine).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matrix.gen.candidates import Candidate

REASONS = (
    "empty",
    "unparseable",
    "too_short",
    "overlong",
    "truncated",
    "echo",
    "refusal",
    "language",
    "chosen_eq_rejected",
    "exact_dup",
    "near_dup",
)
_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_WS = re.compile(r"\s+")
# Detectors guess wildly on a few words; shorter texts are not checked.
MIN_LANGUAGE_LETTERS = 20


def _has_text(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _echoes(messages) -> bool:
    """An answer that just repeats the request it answers (small models parrot)."""
    for prev, m in zip(messages, messages[1:], strict=False):
        if m["role"] == "assistant" and prev["role"] == "user":
            ask = normalize(prev["content"])
            if len(ask) >= 20 and normalize(m["content"]).startswith(ask):
                return True
    return False


def normalize(text: str) -> str:
    """Case, whitespace and edge punctuation folded, for exact-duplicate keys."""
    return _WS.sub(" ", text.lower()).strip(" \t\n.!?\"'`")


@dataclass(frozen=True)
class Rules:
    min_instruction_chars: int
    max_instruction_chars: int
    min_response_chars: int
    max_response_chars: int
    drop_truncated: bool
    language: str | None
    refusal_patterns: tuple[str, ...]

    @classmethod
    def from_cfg(cls, f) -> Rules:
        return cls(
            int(f.min_instruction_chars),
            int(f.max_instruction_chars),
            int(f.min_response_chars),
            int(f.max_response_chars),
            bool(f.drop_truncated),
            f.language or None,
            tuple(f.refusal_patterns or ()),
        )


@functools.cache
def _language_detector():
    """lingua's detector over every language it knows, in low-accuracy mode (trigram models
    only: deterministic, and faster than langdetect on sentence-length texts; bench/language.py
    measures both). Built once per process; models load on first use."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def language_of(code: str):
    """lingua's Language for an ISO 639-1 code ("en"), or a ValueError naming the key."""
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(IsoCode639_1.from_str(code))
    except ValueError as e:
        raise ValueError(
            f"generate.filters.language={code!r} is not an ISO 639-1 code lingua knows "
            "(en, fr, de, ...); use one, or null to keep every language"
        ) from e


class LanguageCheck:
    """Whether a text is in the wanted language (lingua: the same answer for the same text on
    every run, no seed). Texts with fewer than MIN_LANGUAGE_LETTERS letters outside code
    blocks pass unchecked; a text lingua cannot place fails."""

    def __init__(self, language: str | None):
        self.language = language_of(language) if language else None

    def ok(self, text: str) -> bool:
        if self.language is None:
            return True
        prose = _CODE_BLOCK.sub(" ", text)
        if sum(ch.isalpha() for ch in prose) < MIN_LANGUAGE_LETTERS:
            return True
        return _language_detector().detect_language_of(prose) == self.language


class RowChecks:
    def __init__(self, rules: Rules):
        self.rules = rules
        self.refusal = (
            re.compile("|".join(f"(?:{p})" for p in rules.refusal_patterns), re.I)
            if rules.refusal_patterns
            else None
        )
        self.lang = LanguageCheck(rules.language)

    def reason(self, c: Candidate, allow_refusals: bool) -> str | None:
        r = self.rules
        if c.problem:
            return c.problem
        users, answers = c.user_texts(), c.assistant_texts()
        # A message with no letter or digit at all (blank, emoji-only) says nothing.
        if not users or not answers or not all(_has_text(t) for t in users + answers):
            return "empty"
        if c.kind == "dpo" and not (c.rejected or "").strip():
            return "empty"
        if any(len(t) < r.min_instruction_chars for t in users) or any(
            len(t) < r.min_response_chars for t in answers
        ):
            return "too_short"
        if any(len(t) > r.max_instruction_chars for t in users) or any(
            len(t) > r.max_response_chars for t in answers + [c.rejected or ""]
        ):
            return "overlong"
        if r.drop_truncated and c.truncated:
            return "truncated"
        if _echoes(c.messages):
            return "echo"
        # Only the openings: a refusal shows up in the first sentences, and quoting one
        # later in a helpful answer should not count.
        if (
            not allow_refusals
            and self.refusal
            and any(self.refusal.search(t[:200]) for t in answers)
        ):
            return "refusal"
        # Per message: one English turn must not carry a conversation in another language.
        if not all(self.lang.ok(t) for t in users + answers):
            return "language"
        if c.kind == "dpo" and normalize(c.rejected or "") == normalize(c.chosen or ""):
            return "chosen_eq_rejected"
        return None


class Deduper:
    """Exact and near-duplicate index over accepted instructions (one per data kind).

    The accepted vectors live in one preallocated float32 matrix whose capacity doubles when
    full, so adding a row is amortised O(dim) and checking one is a single matrix-vector
    product over the rows so far (no re-stacking of every stored vector per row). A brute-force
    product is exact and, at the tens of thousands of rows a generate run keeps, faster than
    building an approximate index (hand-written for that reason: FAISS would add a native
    dependency for no gain at this size).
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.keys: set[str] = set()
        self._matrix: np.ndarray | None = None  # [capacity, dim]; rows [:size] are in use
        self.size = 0

    @property
    def vectors(self) -> np.ndarray:
        """The accepted vectors, [size, dim] (a view)."""
        if self._matrix is None:
            return np.empty((0, 0), dtype=np.float32)
        return self._matrix[: self.size]

    def add(self, text: str, vector: np.ndarray) -> None:
        self.keys.add(normalize(text))
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._matrix is None:
            self._matrix = np.empty((64, v.shape[0]), dtype=np.float32)
        elif v.shape[0] != self._matrix.shape[1]:
            raise ValueError(
                f"near-duplicate index holds {self._matrix.shape[1]}-d vectors, got {v.shape[0]}"
                "-d: one generate run must embed every row with the same model"
            )
        if self.size == len(self._matrix):
            grown = np.empty((2 * len(self._matrix), v.shape[0]), dtype=np.float32)
            grown[: self.size] = self._matrix
            self._matrix = grown
        self._matrix[self.size] = v
        self.size += 1

    def reason(self, text: str, vector: np.ndarray) -> str | None:
        if normalize(text) in self.keys:
            return "exact_dup"
        if self.size:
            sims = self.vectors @ np.asarray(vector, dtype=np.float32).reshape(-1)
            if float(sims.max()) >= self.threshold:
                return "near_dup"
        return None

    def admit(self, text: str, vector: np.ndarray) -> str | None:
        """The duplicate reason, or None after adding the text to the index."""
        why = self.reason(text, vector)
        if why is None:
            self.add(text, vector)
        return why


def filter_batch(
    cands: Sequence[Candidate],
    vectors: np.ndarray,
    checks: RowChecks,
    dedup: Deduper,
    allow_refusals: bool,
    need: int,
) -> tuple[list[Candidate], list[tuple[Candidate, str]], int]:
    """Accepted candidates (at most `need`, in order), dropped ones with reasons, surplus count.

    A row accepted here joins the duplicate index at once, so two paraphrases in the same
    batch do not both pass. Rows past `need` are surplus: never checked, never indexed.
    """
    kept: list[Candidate] = []
    dropped: list[tuple[Candidate, str]] = []
    surplus = 0
    for c, v in zip(cands, vectors, strict=True):
        if len(kept) >= need:
            surplus += 1
            continue
        why = checks.reason(c, allow_refusals) or dedup.admit(c.instruction, v)
        if why:
            dropped.append((c, why))
        else:
            kept.append(c)
    return kept, dropped, surplus
