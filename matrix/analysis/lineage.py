"""Lineage of evaluation answers: the training rows nearest to an answer, and the simulated
scenarios and agents those rows came from.

Similarity is the cosine of sentence embeddings (matrix.llm.embeddings.Encoder) between an answer
and a training row's instruction + response; it points at data to inspect, not at a cause.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix.analysis.arms import Arm
from matrix.common.io import read_jsonl
from matrix.gen.candidates import row_instruction, row_responses


@dataclass(frozen=True)
class Neighbour:
    row_id: str
    similarity: float
    instruction: str
    scenario_ids: list[Any]
    agent_ids: list[Any]


@dataclass(frozen=True)
class AnswerLineage:
    benchmark: str
    item_id: Any
    answer: str
    neighbours: list[Neighbour]


def training_rows(arm: Arm) -> list[dict]:
    """The rows the arm trained on (train's manifest input), else generate's sft + dpo files."""
    data = ((arm.manifests.get("train") or {}).get("inputs") or {}).get("data") or {}
    path = Path(data["path"]) if data.get("path") else None
    if path is not None and path.is_file():
        return read_jsonl(path)
    rows: list[dict] = []
    for kind in ("sft", "dpo"):
        f = arm.dir / "generate" / f"{kind}.jsonl"
        if f.exists():
            rows += read_jsonl(f)
    return rows


def answers(arm: Arm, limit: int) -> list[tuple[str, Any, str]]:
    """(benchmark, item id, first answer turn) for the first `limit` answers of each benchmark."""
    out: list[tuple[str, Any, str]] = []
    for bench in sorted(arm.scores):
        f = arm.dir / "evaluate" / bench / "answers.jsonl"
        if not f.exists():
            continue
        for a in read_jsonl(f, torn_tail=True)[:limit]:  # evaluate may still be writing
            turns = a.get("turns") or []
            text = turns[0] if turns and isinstance(turns[0], str) else json.dumps(turns)[:2000]
            out.append((bench, a.get("id"), text))
    return out


def _row_text(row: dict) -> str:
    responses = row_responses(row)
    return row_instruction(row) + ("\n" + responses[0] if responses else "")


def answer_lineage(arm: Arm, encoder: Any, n_answers: int = 3, k: int = 3) -> list[AnswerLineage]:
    rows = training_rows(arm)
    picked = answers(arm, n_answers)
    if not rows or not picked:
        return []
    row_vecs = encoder.encode([_row_text(r) for r in rows])
    ans_vecs = encoder.encode([t for _, _, t in picked])
    sims = ans_vecs @ row_vecs.T  # the encoder returns L2-normalised vectors
    out = []
    for (bench, item_id, text), s in zip(picked, sims, strict=True):
        top = s.argsort()[::-1][:k]
        neighbours = [
            Neighbour(
                row_id=str(rows[i].get("id")),
                similarity=round(float(s[i]), 4),
                instruction=row_instruction(rows[i]),
                scenario_ids=list((rows[i].get("lineage") or {}).get("scenario_ids") or []),
                agent_ids=list((rows[i].get("lineage") or {}).get("agent_ids") or []),
            )
            for i in top
        ]
        out.append(AnswerLineage(bench, item_id, text, neighbours))
    return out
