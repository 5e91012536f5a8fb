"""MT-Bench: 80 two-turn questions, single-answer 1-10 grading by the judge (FastChat llm_judge).

Turn 2 is asked after the model's own turn-1 answer. Each turn gets one judge call: `single-v1`
(`single-math-v1` with the GPT-4 reference for math, reasoning and coding) for turn 1 and the
`*-multi-turn` templates for turn 2. Score = mean of the 160 turn ratings; an unparsed rating
counts as 1 (the lowest grade) and is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matrix.eval.benchmarks.base import Benchmark, Record, by_id
from matrix.eval.datafiles import read_jsonl
from matrix.eval.judging import judge_batch, parse_rating

NEED_REF_CATS = ("math", "reasoning", "coding")
# FastChat gen_model_answer temperatures per category
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
FAILED_RATING = 1.0


def bootstrap_mean_ci(values: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


class MTBench(Benchmark):
    name = "mt_bench"

    def load(self) -> list[Record]:
        refs = {
            r["question_id"]: r["choices"][0]["turns"]
            for r in read_jsonl("mt_bench/reference_answer/gpt-4.jsonl")
        }
        items = [
            {
                "id": q["question_id"],
                "category": q["category"],
                "turns": q["turns"],
                "reference": refs.get(q["question_id"]),
            }
            for q in read_jsonl("mt_bench/question.jsonl")
        ]
        return self.limit(items)

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        sampling = dict(self.opt("sampling", {}))
        per_cat = bool(self.opt("category_temperature", True))
        histories = [[] for _ in items]
        answers: list[list[str]] = [[] for _ in items]
        for turn in range(2):
            # group by temperature so each group is one batched call
            groups: dict[float, list[int]] = {}
            for k, it in enumerate(items):
                t = (
                    CATEGORY_TEMPERATURE[it["category"]]
                    if per_cat
                    else sampling.get("temperature", 0.0)
                )
                groups.setdefault(t, []).append(k)
            for temp, idx in groups.items():
                for k in idx:
                    histories[k].append({"role": "user", "content": items[k]["turns"][turn]})
                outs = model.generate(
                    [list(histories[k]) for k in idx], **{**sampling, "temperature": temp}
                )
                for k, o in zip(idx, outs, strict=True):
                    histories[k].append({"role": "assistant", "content": o.text})
                    answers[k].append(o.text)
        return [{"id": it["id"], "turns": a} for it, a in zip(items, answers, strict=True)]

    def judge_calls(self, n_items: int) -> int:
        return 2 * n_items

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        prompts = {p["name"]: p for p in read_jsonl("mt_bench/judge_prompts.jsonl")}
        ans = by_id(answers)
        chats = []
        for it in items:
            a = ans[it["id"]]["turns"]
            ref = it["reference"] if it["category"] in NEED_REF_CATS else None
            fields = {
                "question": it["turns"][0],
                "answer": a[0],
                "question_1": it["turns"][0],
                "question_2": it["turns"][1],
                "answer_1": a[0],
                "answer_2": a[1],
            }
            if ref:
                fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
            names = (
                ("single-math-v1", "single-math-v1-multi-turn")
                if ref
                else ("single-v1", "single-v1-multi-turn")
            )
            for name in names:
                p = prompts[name]
                chats.append(
                    [
                        {"role": "system", "content": p["system_prompt"]},
                        {"role": "user", "content": p["prompt_template"].format(**fields)},
                    ]
                )
        out = judge_batch(judge, chats, parse_rating, **self.opt("judge_sampling", {}))
        return [
            {"id": it["id"], "turns": [out[2 * k].as_dict(), out[2 * k + 1].as_dict()]}
            for k, it in enumerate(items)
        ]

    def score(self, items: list[Record], answers: list[Record], judgments: list[Record]) -> dict:
        jud = by_id(judgments)
        ratings, failures, per_cat, per_turn = [], 0, {}, ([], [])
        for it in items:
            for t, j in enumerate(jud[it["id"]]["turns"]):
                r = j["verdict"] if j["ok"] else FAILED_RATING
                failures += not j["ok"]
                ratings.append(r)
                per_turn[t].append(r)
                per_cat.setdefault(it["category"], []).append(r)
        arr = np.array(ratings, dtype=float)
        return {
            "score": float(arr.mean()),
            "score_ci95": bootstrap_mean_ci(arr),
            "turn_1": float(np.mean(per_turn[0])),
            "turn_2": float(np.mean(per_turn[1])),
            **{f"category/{c}": float(np.mean(v)) for c, v in sorted(per_cat.items())},
            "n": len(items),
            "judge_failures": failures,
        }
