"""Arena-Hard v0.1: 500 hard prompts, pairwise against GPT-4-0314, both answer orders.

Game 1 shows the baseline as assistant A and the model as B, game 2 swaps them (arena-hard-auto's
gen_judgment). Verdicts [[A>>B]] .. [[B>>A]] become battles (a strong verdict weighs 3), scored
with Bradley-Terry as a 0-100 win rate vs the baseline with bootstrap CIs; optionally with style
control (length in cl100k_base tokens as upstream, words only when tiktoken's file is unavailable,
and markdown density). A game whose verdict does not parse is, by `unparsed_verdicts`, dropped
(`drop`, arena-hard-auto) or counted as one lost battle (`loss`); the scores say which.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from matrix.eval.benchmarks.base import Benchmark, Record, by_id, single_turn
from matrix.eval.bradley_terry import (
    Battles,
    bradley_terry,
    length_unit,
    style_features,
    verdict_to_battles,
)
from matrix.eval.datafiles import data_path, read_jsonl
from matrix.eval.judging import judge_batch, parse_arena_verdict

BASELINE = "gpt-4-0314"
MODEL = "model"


class ArenaHard(Benchmark):
    name = "arena_hard"

    def load(self) -> list[Record]:
        base = {
            r["uid"]: r["messages"][-1]["content"]["answer"]
            for r in read_jsonl("arena_hard_v0.1/model_answer/gpt-4-0314.jsonl.gz")
        }
        items = [
            {
                "id": q["uid"],
                "prompt": q["prompt"],
                "cluster": q["cluster"],
                "baseline": base[q["uid"]],
            }
            for q in read_jsonl("arena_hard_v0.1/question.jsonl")
        ]
        return self.limit(items)

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        texts = single_turn(model, [it["prompt"] for it in items], **self.opt("sampling", {}))
        return [{"id": it["id"], "turns": [t]} for it, t in zip(items, texts, strict=True)]

    def judge_calls(self, n_items: int) -> int:
        return 2 * n_items

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        cfg = OmegaConf.load(data_path("arena_hard_v0.1/judge_config.yaml"))
        template = cfg.prompt_template[0]
        ans = by_id(answers)
        chats = []
        for it in items:
            model_answer = ans[it["id"]]["turns"][0]
            for a, b in ((it["baseline"], model_answer), (model_answer, it["baseline"])):
                user = template.format(question_1=it["prompt"], answer_1=a, answer_2=b)
                chats.append(
                    [
                        {"role": "system", "content": cfg.system_prompt},
                        {"role": "user", "content": user},
                    ]
                )
        out = judge_batch(judge, chats, parse_arena_verdict, **self.opt("judge_sampling", {}))
        rows = []
        for k, it in enumerate(items):
            g1, g2 = out[2 * k], out[2 * k + 1]
            rows.append({"id": it["id"], "games": [g1.as_dict(), g2.as_dict()]})
        return rows

    def battles(self, items: list[Record], judgments: list[Record], answers: list[Record]):
        jud, ans = by_id(judgments), by_id(answers)
        weight = int(self.opt("strong_weight", 3))
        unparsed = self.unparsed_policy()
        records, model_texts, base_texts, failures = [], [], [], 0
        for it in items:
            for game, model_is_a in zip(jud[it["id"]]["games"], (False, True), strict=True):
                if game["ok"]:
                    outcomes = verdict_to_battles(game["verdict"], model_is_a, weight)
                else:
                    failures += 1
                    # upstream drops the game; "loss" counts it as one lost battle
                    outcomes = [0.0] if unparsed == "loss" else []
                for o in outcomes:
                    records.append((MODEL, BASELINE, o))
                    model_texts.append(ans[it["id"]]["turns"][0])
                    base_texts.append(it["baseline"])
        return records, model_texts, base_texts, failures

    def unparsed_policy(self) -> str:
        """loss | drop (a typed option: matrix.eval.settings.ArenaHard, checked up front)."""
        return str(self.opt("unparsed_verdicts", "loss"))

    def score(self, items: list[Record], answers: list[Record], judgments: list[Record]) -> dict:
        records, mt, bt, failures = self.battles(items, judgments, answers)
        if not records:
            raise ValueError(
                "arena_hard: no judged game left to score (every verdict was unparsed and "
                "unparsed_verdicts=drop); check the judge's answers in judgments.jsonl"
            )
        n_boot = int(self.opt("n_bootstrap", 100))
        res = bradley_terry(Battles.from_records(records), BASELINE, n_bootstrap=n_boot)
        out: dict[str, Any] = {
            "score": res.scores[MODEL],
            "score_ci95": [res.lower[MODEL], res.upper[MODEL]],
            "n": len(items),
            "n_battles": len(records),
            "judge_failures": failures,
            "unparsed_verdicts": (
                "dropped (arena-hard-auto)" if self.unparsed_policy() == "drop" else "lost battle"
            ),
            "avg_words": sum(len(a["turns"][0].split()) for a in answers) / max(len(answers), 1),
        }
        control = list(self.opt("style_control", []))
        if control:
            out["style_length_unit"] = length_unit()[0]
            style = style_features(mt, bt, use=control)
            sc = bradley_terry(
                Battles.from_records(records, style=style), BASELINE, n_bootstrap=n_boot
            )
            out["score_style_controlled"] = sc.scores[MODEL]
            out["score_style_controlled_ci95"] = [sc.lower[MODEL], sc.upper[MODEL]]
        return out
