"""AlpacaEval 2: 805 instructions, pairwise against GPT-4-Turbo reference outputs.

The judge sees the upstream `alpaca_eval_clf` prompt with both outputs (order randomised per
instruction, as upstream) and answers `m` or `M`. With `soft_preferences` (default) the judge is
asked for its first token's top log-probs and the preference is P("m") / (P("m") + P("M")), as
upstream's weighted_alpaca_eval_gpt4_turbo; a judge backend that returns no log-probs (or none for
either identifier) falls back to the hard verdict, 1 or 2. The scores count which was used
(`preference_source`). Raw win rate with standard error, and the length-controlled win rate
(`matrix.eval.alpaca_lc_glm`, with the shipped difficulty table of `matrix.eval.alpaca_lc_table`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from matrix.eval.alpaca_lc_glm import Pairwise, fit_length_controlled
from matrix.eval.alpaca_lc_table import bundled_table
from matrix.eval.benchmarks.base import Benchmark, Record, by_id, single_turn
from matrix.eval.datafiles import read_jsonl, read_text
from matrix.eval.judging import (
    alpaca_first_output_probability,
    judge_batch,
    parse_alpaca_identifier,
)
from matrix.eval.winrate import preferences_to_unit, win_rate
from matrix.llm.protocol import Chat

# LC needs enough rows to fit three coefficients; below this only the raw win rate is reported.
MIN_ROWS_FOR_LC = 100


def chatml_to_chat(text: str) -> Chat:
    """Split an upstream `<|im_start|>role ... <|im_end|>` template into chat messages."""
    chat = []
    for block in text.split("<|im_start|>")[1:]:
        role, _, content = block.partition("\n")
        chat.append({"role": role.strip(), "content": content.split("<|im_end|>")[0].strip()})
    return chat


class AlpacaEval2(Benchmark):
    name = "alpaca_eval2"

    def load(self) -> list[Record]:
        refs = read_jsonl("alpaca_eval_2/reference_outputs_gpt4_turbo.jsonl.gz")
        items = [
            {
                "id": r["index"],
                "instruction": r["instruction"],
                "dataset": r["dataset"],
                "reference": ref["output"],
            }
            for r, ref in zip(read_jsonl("alpaca_eval_2/instructions.jsonl"), refs, strict=True)
        ]
        return self.limit(items)

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        texts = single_turn(model, [it["instruction"] for it in items], **self.opt("sampling", {}))
        return [{"id": it["id"], "turns": [t]} for it, t in zip(items, texts, strict=True)]

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        template = read_text("alpaca_eval_2/judge/alpaca_eval_clf.txt")
        ans = by_id(answers)
        chats, swapped = [], []
        for it in items:
            # per-item seeded coin flip: the same item gets the same order on every rerun
            swap = random.Random(f"{self.opt('seed', 0)}:{it['id']}").random() < 0.5
            model_out, ref_out = ans[it["id"]]["turns"][0], it["reference"]
            o1, o2 = (model_out, ref_out) if swap else (ref_out, model_out)
            text = (
                template.replace("{instruction}", it["instruction"])
                .replace("{output_1}", o1)
                .replace("{output_2}", o2)
            )
            chats.append(chatml_to_chat(text))
            swapped.append(swap)
        sampling = dict(self.opt("judge_sampling", {}))
        if self.opt("soft_preferences", True):
            sampling["logprobs"] = int(self.opt("top_logprobs", 5))  # upstream asks for 5
        out = judge_batch(judge, chats, parse_alpaca_identifier, **sampling)
        rows = []
        for it, j, swap in zip(items, out, swapped, strict=True):
            # the first answer whose top log-probs name either identifier (upstream: the one call)
            p_first = next(
                (
                    p
                    for lp in j.first_token_logprobs
                    if (p := alpaca_first_output_probability(lp)) is not None
                ),
                None,
            )
            if p_first is not None:
                p_model = p_first if swap else 1.0 - p_first  # "m" names output_1
                preference, source = 1.0 + p_model, "logprobs"
            elif j.ok:
                model_won = (j.verdict == "m") == swap
                preference, source = (2.0 if model_won else 1.0), "verdict"
            else:
                preference, source = 1.0, "unparsed"  # counted as a loss, and reported
            rows.append(
                {
                    "id": it["id"],
                    "preference": preference,
                    "preference_source": source,
                    "swapped": swap,
                    **j.as_dict(),
                }
            )
        return rows

    def score(self, items: list[Record], answers: list[Record], judgments: list[Record]) -> dict:
        ans, jud = by_id(answers), by_id(judgments)
        ids = [it["id"] for it in items]
        prefs = [jud[i]["preference"] for i in ids]
        wr = win_rate(prefs)
        model_len = np.array([len(ans[i]["turns"][0]) for i in ids])
        ref_len = np.array([len(it["reference"]) for it in items])
        out: dict[str, Any] = {
            "win_rate": wr.win_rate,
            "win_rate_se": wr.standard_error,
            # Normal interval (as AlpacaEval reports its SE), clipped to the 0-100 scale that
            # small samples would otherwise leave.
            "win_rate_ci95": [
                max(0.0, wr.win_rate - 1.96 * wr.standard_error),
                min(100.0, wr.win_rate + 1.96 * wr.standard_error),
            ],
            "n": wr.n_total,
            "judge_failures": sum(not jud[i]["ok"] for i in ids),
            "preferences": _preference_summary([jud[i] for i in ids]),
            "avg_length": float(model_len.mean()),
            "avg_length_reference": float(ref_len.mean()),
        }
        if len(ids) >= MIN_ROWS_FOR_LC and 0 < wr.win_rate < 100:
            pairs = Pairwise(preferences_to_unit(prefs), model_len, ref_len)
            table = bundled_table().subset(np.array(ids))
            fit = fit_length_controlled(pairs, table.difficulty, gamed=table.gamed)
            out["length_controlled_win_rate"] = fit.length_controlled_win_rate
        return out

    def per_item_lengths(self, items: list[Record], answers: list[Record], judgments: list[Record]):
        """(answer length, P(win)) per item, for the win-rate-vs-length plot."""
        ans, jud = by_id(answers), by_id(judgments)
        return [(len(ans[i["id"]]["turns"][0]), jud[i["id"]]["preference"] - 1) for i in items]


def _preference_summary(judgments: list[Record]) -> str:
    """Which kind of preference the win rate is made of, e.g. "soft (judge log-probs): 805"."""
    counts = {"logprobs": 0, "verdict": 0, "unparsed": 0}
    for j in judgments:
        # rows judged before soft preferences existed are hard verdicts
        counts[j.get("preference_source", "verdict" if j["ok"] else "unparsed")] += 1
    labels = {
        "logprobs": "soft (judge log-probs)",
        "verdict": "hard (verdict text)",
        "unparsed": "unparsed (counted as losses)",
    }
    return ", ".join(f"{labels[k]}: {n}" for k, n in counts.items() if n)
