"""An LLM judge's tags of each instruction: quality and difficulty (the paper's Fig. 5), task
category, root verb and its direct-object noun (Fig. 7), all from one call per instruction.

Scales follow Magpie's instruction tags, the dataset the paper compares MATRIX-Gen with: quality
very poor / poor / average / good / excellent and difficulty very easy / easy / medium / hard /
very hard, stored as 1-5; Magpie's task categories.

Why the judge extracts verbs and nouns, not a parser: the Self-Instruct analysis parses each
instruction with a dependency parser (Berkeley's, or spaCy's), but no well-kept parser with its
model installs from PyPI alone. spaCy's English pipelines are published outside PyPI (there the
`en-core-web-*` names are placeholders or third-party re-uploads), and NLTK's and Stanza's
taggers download their data at run time. The judge, already asked for the tags above, names the
verb and the noun in the same answer, so the extraction costs no extra call.

Answers are judged in batches through the role's cached, ledgered LLM (`judge_batch`: one retry
at a small temperature, then `ok=False`), and each batch's tags are appended to a JSONL file,
so a rerun judges only rows it has no tags for (same row id, instruction, judge and prompt).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matrix.analysis.gen_runs import Row
from matrix.common.io import JsonlLog, text_sha256
from matrix.eval.judging import judge_batch

log = logging.getLogger(__name__)

QUALITY = ("very poor", "poor", "average", "good", "excellent")
DIFFICULTY = ("very easy", "easy", "medium", "hard", "very hard")
CATEGORIES = (
    "Information seeking",
    "Reasoning",
    "Planning",
    "Editing",
    "Coding & Debugging",
    "Math",
    "Role playing",
    "Data analysis",
    "Creative writing",
    "Advice seeking",
    "Brainstorming",
    "Others",
)

PROMPT = """You are tagging one user instruction from a dataset used to train chat assistants.
Judge the instruction itself, not any answer to it.

Instruction:
\"\"\"
{instruction}
\"\"\"

Answer with one JSON object and nothing else, with these five keys:
{{"quality": <1-5>, "difficulty": <1-5>, "category": "<category>", "verb": "<verb>", "noun": "<noun>"}}

quality: how clear, specific and well-formed the request is, 1 to 5 (1 very poor, 2 poor, \
3 average, 4 good, 5 excellent).
difficulty: how hard it is to answer it well, 1 to 5 (1 very easy, 2 easy, 3 medium, 4 hard, \
5 very hard).
category: one of {categories}.
verb: the main verb of the request, lowercase base form (write, explain, help); "" if none.
noun: the direct object of that verb, one lowercase singular noun (email, plan, code); "" if none."""

PROMPT_VERSION = text_sha256(PROMPT)[:8]
# asked of backends that constrain decoding (vLLM, OpenAI-compatible); others get the prompt only
TAGS_SCHEMA = {
    "type": "object",
    "properties": {
        "quality": {"type": "integer", "minimum": 1, "maximum": 5},
        "difficulty": {"type": "integer", "minimum": 1, "maximum": 5},
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "verb": {"type": "string"},
        "noun": {"type": "string"},
    },
    "required": ["quality", "difficulty", "category", "verb", "noun"],
}
MAX_INSTRUCTION_CHARS = 2000


@dataclass(frozen=True)
class Tags:
    quality: int
    difficulty: int
    category: str
    verb: str
    noun: str


def judge_chat(instruction: str) -> list[dict[str, str]]:
    text = instruction.strip()[:MAX_INSTRUCTION_CHARS]
    prompt = PROMPT.format(instruction=text, categories=", ".join(CATEGORIES))
    return [{"role": "user", "content": prompt}]


def _scale(value: Any, words: Sequence[str]) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer() and 1 <= value <= 5:
        return int(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v.isdigit():
            return _scale(int(v), words)
        for i in sorted(range(5), key=lambda i: -len(words[i])):  # "very poor" before "poor"
            if v.startswith(words[i]):
                return i + 1
    return None


def _category(value: Any) -> str:
    v = str(value or "").strip().lower()
    for c in CATEGORIES:
        if v and (v == c.lower() or v.startswith(c.lower().split()[0])):
            return c
    return "Others"


def _word(value: Any) -> str:
    m = re.match(r"[a-z][a-z'-]*", str(value or "").strip().lower())
    return m.group(0) if m else ""


def _fields(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`, else `key: value` lines (small judges drop braces)."""
    for m in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            return {str(k).lower(): v for k, v in obj.items()}
    pairs = re.findall(
        r'"?(quality|difficulty|category|verb|noun)"?\s*[:=]\s*"?([^",\n}]*)', text, re.I
    )
    return {k.lower(): v for k, v in pairs} or None


def parse_tags(text: str) -> Tags | None:
    """The tags in a judge answer; None (a failed judgment) without a valid quality and
    difficulty. A missing or unknown category is "Others"; a missing verb or noun is ""."""
    obj = _fields(text)
    if obj is None:
        return None
    q, d = _scale(obj.get("quality"), QUALITY), _scale(obj.get("difficulty"), DIFFICULTY)
    if q is None or d is None:
        return None
    return Tags(
        q, d, _category(obj.get("category")), _word(obj.get("verb")), _word(obj.get("noun"))
    )


def _key(row: Row, judge_name: str) -> str:
    return text_sha256(f"{judge_name}|{PROMPT_VERSION}|{row.id}|{row.instruction}")[:16]


@dataclass
class JudgeResult:
    tags: dict[str, Tags]  # row id -> tags, for the rows that parsed
    failed: list[str]  # row ids whose answers did not parse (after the retry)
    judged_now: int  # rows sent to the judge in this run (the rest came from the tags file)


def judge_rows(
    rows: Sequence[Row],
    judge: Any,
    tags_file: Path,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    **sampling: Any,
) -> JudgeResult:
    """Tag every row; `judge` is a role LLM (`name`, `generate(chats, **overrides)`)."""
    sampling.setdefault("json_schema", TAGS_SCHEMA)
    store = JsonlLog(tags_file)
    name = str(getattr(judge, "name", "judge"))
    done = {r["key"]: r for r in store.read()}
    todo = [r for r in rows if _key(r, name) not in done]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        judged = judge_batch(
            judge, [judge_chat(r.instruction) for r in batch], parse_tags, **sampling
        )
        records = [
            {
                "key": _key(r, name),
                "id": r.id,
                "judge": name,
                "prompt": PROMPT_VERSION,
                "ok": j.ok,
                "tags": asdict(j.verdict) if j.ok else None,
                "raw": list(j.raw),
            }
            for r, j in zip(batch, judged, strict=True)
        ]
        store.append(records)
        done.update({rec["key"]: rec for rec in records})
        if on_batch is not None:
            on_batch(len(batch))
    tags: dict[str, Tags] = {}
    failed: list[str] = []
    for r in rows:
        rec = done[_key(r, name)]
        if rec["ok"]:
            tags[r.id] = Tags(**rec["tags"])
        else:
            failed.append(r.id)
    if failed:
        log.warning(
            "judge: %d of %d answers did not parse (rows %s%s); they are counted, not scored",
            len(failed),
            len(rows),
            ", ".join(failed[:5]),
            ", ..." if len(failed) > 5 else "",
        )
    return JudgeResult(tags, failed, len(todo))
