"""MT-Bench-101: 1,388 multi-turn dialogues over 13 tasks, judged per turn (OpenCompass protocol).

For each scored turn t the model answers user turn t given the golden history before it; the
judge grades that answer 1-10 with the task's criteria (MR/GR tasks also see the golden dialogue
as a reference). A dialogue scores its minimum turn; tasks average their dialogues. An unparsed
grade counts as 1 and is reported.

Two aggregates of the dialogue scores, both always in the scores (`score_task_mean`,
`score_dialogue_mean`); `aggregate` picks the one that `score` and the three ability columns use:
- `tasks` (OpenCompass, the benchmark's own code): the mean of the 13 task means; an ability is
  the mean of its tasks' means.
- `dialogues`: the mean over dialogues; an ability is the mean over its tasks' dialogues. The
  MATRIX paper's Table 5 reads this way: its overall column equals the dialogue-weighted mean of
  its three ability columns within 0.02 on every row, and misses the task-weighted one by 0.07-0.16.

Abilities are MT-Bench-101's three top-level ones (its paper's taxonomy; the upstream code has no
grouping): perceptivity (context memory, anaphora resolution, separate input, topic shift,
content confusion), adaptability (content and format rephrasing, self-correction,
self-affirmation, mathematical and general reasoning), interactivity (instruction
clarification, proactive interaction).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matrix.eval.benchmarks.base import Benchmark, Record, by_id
from matrix.eval.datafiles import read_json, read_jsonl
from matrix.eval.judging import judge_batch, parse_mt101_score

FAILED_SCORE = 1.0

ABILITIES: dict[str, tuple[str, ...]] = {
    "perceptivity": ("CM", "AR", "SI", "TS", "CC"),
    "adaptability": ("CR", "FR", "SC", "SA", "MR", "GR"),
    "interactivity": ("IC", "PI"),
}


class MTBench101(Benchmark):
    name = "mt_bench_101"

    def load(self) -> list[Record]:
        prompts = read_json("mt_bench_101/judge_prompts.json")
        skip_first = set(prompts["skip_first_tasks"])
        items = []
        for d in read_jsonl("mt_bench_101/mtbench101.jsonl.gz"):
            first = 1 if d["task"] in skip_first else 0
            items.append(
                {
                    "id": d["id"],
                    "task": d["task"],
                    "history": d["history"],
                    "scored_turns": list(range(first, len(d["history"]))),
                }
            )
        tasks = self.opt("tasks", None)
        if tasks:
            items = [it for it in items if it["task"] in set(tasks)]
        return self.limit(items)

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        chats, where = [], []
        for it in items:
            for t in it["scored_turns"]:
                chat = []
                for h in it["history"][:t]:
                    chat += [
                        {"role": "user", "content": h["user"]},
                        {"role": "assistant", "content": h["bot"]},
                    ]
                chat.append({"role": "user", "content": it["history"][t]["user"]})
                chats.append(chat)
                where.append(it["id"])
        outs = model.generate(chats, **self.opt("sampling", {}))
        answers: dict[Any, list[str]] = {it["id"]: [] for it in items}
        for i, o in zip(where, outs, strict=True):
            answers[i].append(o.text)
        return [{"id": i, "turns": a} for i, a in answers.items()]

    def judge_calls(self, n_items: int) -> int:
        return 3 * n_items  # about 3 scored turns per dialogue (4,208 turns / 1,388 dialogues)

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        p = read_json("mt_bench_101/judge_prompts.json")
        ans = by_id(answers)
        chats, owners = [], []
        for it in items:
            system = p["judge_preamble"] + p["task_prompts"][it["task"]] + p["score_format"]
            for k, t in enumerate(it["scored_turns"]):
                history = "".join(
                    f"\n\n Human: {h['user']}\n\nAssistant: {h['bot']}" for h in it["history"][:t]
                )
                history += f"\n\n Human: {it['history'][t]['user']}\n\nAssistant: "
                prediction = ans[it["id"]]["turns"][k]
                if it["task"] in p["need_ref_tasks"]:
                    ref = []
                    for h in it["history"][: t + 1]:
                        ref += [
                            {"role": "user", "content": h["user"]},
                            {"role": "assistant", "content": h["bot"]},
                        ]
                    user = p["user_prompt_template_with_ref"].format(
                        history=history, prediction=prediction, ref_answer=ref
                    )
                else:
                    user = p["user_prompt_template_no_ref"].format(
                        history=history, prediction=prediction
                    )
                chats.append(
                    [{"role": "system", "content": system}, {"role": "user", "content": user}]
                )
                owners.append(it["id"])
        out = judge_batch(judge, chats, parse_mt101_score, **self.opt("judge_sampling", {}))
        per: dict[Any, list[dict]] = {it["id"]: [] for it in items}
        for i, j in zip(owners, out, strict=True):
            per[i].append(j.as_dict())
        return [{"id": i, "turns": v} for i, v in per.items()]

    def score(self, items: list[Record], answers: list[Record], judgments: list[Record]) -> dict:
        jud = by_id(judgments)
        per_task: dict[str, list[float]] = {}
        failures = 0
        for it in items:
            turns = jud[it["id"]]["turns"]
            failures += sum(not j["ok"] for j in turns)
            scores = [j["verdict"] if j["ok"] else FAILED_SCORE for j in turns]
            if scores:
                per_task.setdefault(it["task"], []).append(min(scores))
        task_means = {t: float(np.mean(v)) for t, v in sorted(per_task.items())}
        by_dialogue = self.opt("aggregate", "dialogues") == "dialogues"
        abilities = {}
        for ability, tasks in ABILITIES.items():
            present = [t for t in tasks if t in per_task]
            if not present:
                continue
            if by_dialogue:
                abilities[ability] = float(np.mean([x for t in present for x in per_task[t]]))
            else:
                abilities[ability] = float(np.mean([task_means[t] for t in present]))
        task_mean = float(np.mean(list(task_means.values())))
        dialogue_mean = float(np.mean([x for v in per_task.values() for x in v]))
        return {
            "score": dialogue_mean if by_dialogue else task_mean,
            **{f"ability/{a}": v for a, v in abilities.items()},
            "score_task_mean": task_mean,
            "score_dialogue_mean": dialogue_mean,
            **{f"task/{t}": m for t, m in task_means.items()},
            "n": len(items),
            "judge_failures": failures,
        }
