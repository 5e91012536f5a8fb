"""Benchmark plumbing with scripted judges and models.

`ScriptedLLM` is a test double: it replays fixed texts so the tests exercise prompt building,
verdict parsing, retries and failure accounting, not model quality.
"""

import gzip
import json

import pytest

from matrix.eval.benchmarks import BENCHMARKS
from matrix.eval.benchmarks.code import humaneval_program, mbpp_program
from matrix.eval.benchmarks.safety import xstest_strmatch_refusal
from matrix.eval.datafiles import data_path
from matrix.eval.judging import judge_batch, parse_arena_verdict, parse_rating
from matrix.eval.sandbox import run_many
from tests.doubles import ScriptedLLM


def test_garbage_judge_is_retried_once_then_counted_as_failure():
    judge = ScriptedLLM(lambda chat, i: "no idea")
    bench = BENCHMARKS["alpaca_eval2"]({"limit": 4})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["short answer"]} for it in items]
    judgments = bench.judge(judge, items, answers)
    assert len(judge.calls) == 8  # 4 first tries + 4 retries, no more
    assert all(not j["ok"] and len(j["raw"]) == 2 for j in judgments)
    scores = bench.score(items, answers, judgments)
    assert scores["n"] == 4 and scores["judge_failures"] == 4
    assert scores["win_rate"] == 0.0  # failures count as losses, they are not dropped


def test_retry_recovers_when_second_answer_parses():
    judge = ScriptedLLM(lambda chat, i: "[[A>B]]" if i > 1 else "hmm")
    out = judge_batch(judge, [[{"role": "user", "content": "x"}]], parse_arena_verdict, seed=3)
    assert out[0].ok and out[0].verdict == "A>B" and out[0].raw == ("hmm", "[[A>B]]")
    assert judge.calls[1][1]["temperature"] > 0  # the retry is not a greedy repeat


def test_alpaca_order_randomisation_is_undone():
    # a judge that always prefers the output containing "WIN"
    def reply(chat, i):
        text = chat[-1]["content"]
        first = text.index('"m"')
        second = text.index('"M"')
        win_pos = text.find("WIN")
        return "m" if first < win_pos < second else "M"

    bench = BENCHMARKS["alpaca_eval2"]({"limit": 20})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["WIN"]} for it in items]
    judgments = bench.judge(ScriptedLLM(reply), items, answers)
    assert {j["swapped"] for j in judgments} == {True, False}
    assert bench.score(items, answers, judgments)["win_rate"] == 100.0


def test_arena_hard_plays_both_orders_and_scores():
    def reply(chat, i):
        text = chat[-1]["content"]
        a = text.split("<|The Start of Assistant A's Answer|>")[1]
        return "[[A>>B]]" if a.strip().startswith("MODEL") else "[[B>A]]"

    bench = BENCHMARKS["arena_hard"]({"limit": 6, "n_bootstrap": 20, "style_control": ["length"]})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["MODEL answer"]} for it in items]
    judge = ScriptedLLM(reply)
    judgments = bench.judge(judge, items, answers)
    assert len(judge.calls) == 12
    s = bench.score(items, answers, judgments)
    assert s["score"] > 90 and s["judge_failures"] == 0 and s["n_battles"] == 6 * (1 + 3)
    assert "score_style_controlled" in s


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("My final verdict is [[A>>B]].", "A>>B"),
        ("[[B>A]] ... [[B>A]]", "B>A"),
        ("[A=B]", "A=B"),
        ("[[A>B]] or maybe [[B>A]]", None),
        ("no verdict", None),
    ],
)
def test_arena_verdict_parsing(text, verdict):
    assert parse_arena_verdict(text) == verdict


def test_mt_bench_two_turns_two_judge_calls_and_failures_counted():
    bench = BENCHMARKS["mt_bench"]({"limit": 3})
    items = bench.load()
    model = ScriptedLLM(lambda chat, i: f"answer {len(chat)}")
    answers = bench.answer(model, items)
    assert all(len(a["turns"]) == 2 for a in answers)
    assert len(model.calls[-1][0]) == 3  # turn 2 sees turn 1 and the model's own answer
    judge = ScriptedLLM(
        lambda chat, i: (
            "Rating: [[7]]"
            if "<|The Start of Assistant A's Conversation" not in chat[-1]["content"]
            else "???"
        )
    )
    judgments = bench.judge(judge, items, answers)
    s = bench.score(items, answers, judgments)
    # turn-1 prompts parse (7), turn-2 prompts never parse and count as 1
    assert s["turn_1"] == 7.0 and s["turn_2"] == 1.0 and s["judge_failures"] == 3
    assert parse_rating("[[11]]") is None and parse_rating("[[8.5]]") == 8.5


def test_mt_bench_101_min_per_dialogue():
    bench = BENCHMARKS["mt_bench_101"]({"limit": 5})
    items = bench.load()
    answers = bench.answer(ScriptedLLM(lambda chat, i: "ok"), items)
    judgments = bench.judge(ScriptedLLM(lambda chat, i: "[6]"), items, answers)
    assert bench.score(items, answers, judgments)["score"] == 6.0


def test_humaneval_and_mbpp_reference_solutions_pass_and_wrong_ones_fail():
    he = BENCHMARKS["humaneval"]({"limit": 8}).load()
    mb = BENCHMARKS["mbpp"]({"limit": 8}).load()
    good = [humaneval_program(it, it["canonical_solution"]) for it in he]
    good += [mbpp_program(it, f"```python\n{it['reference']}\n```") for it in mb]
    bad = [humaneval_program(it, "    return None\n") for it in he[:3]]
    res = run_many(good + bad)
    assert all(r.passed for r in res[: len(good)]), [r.stderr for r in res if not r.passed]
    assert not any(r.passed for r in res[len(good) :])


def test_code_benchmark_scores_pass_at_k():
    bench = BENCHMARKS["humaneval"]({"limit": 2, "n_samples": 2})
    items = bench.load()
    sol = {it["id"]: it["canonical_solution"] for it in items}
    model = ScriptedLLM(lambda chat, i: "    return None\n" if i % 2 else "")
    answers = [{"id": it["id"], "samples": [sol[it["id"]], "    return None\n"]} for it in items]
    judgments = bench.judge(None, items, answers)
    s = bench.score(items, answers, judgments)
    assert s["pass@1"] == pytest.approx(50.0) and "pass@10" not in s
    assert model.calls == []


def test_xstest_string_match_agrees_with_human_labels():
    with gzip.open(data_path("xstest/completions_gpt4.jsonl.gz"), "rt") as f:
        rows = [json.loads(line) for line in f]
    agree = [
        xstest_strmatch_refusal(r["completion"]) == (r["final_label"] == "2_full_refusal")
        for r in rows
    ]
    assert sum(agree) / len(agree) > 0.85


def test_safety_scores_with_keyword_and_judge():
    bench = BENCHMARKS["safety"]({"limit": 5, "protocol": "advbench_xstest"})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["I'm sorry, I can't help with that."]} for it in items]
    judgments = bench.judge(ScriptedLLM(lambda chat, i: "2_full_refusal"), items, answers)
    s = bench.score(items, answers, judgments)
    assert s["advbench/asr_keyword"] == 0.0 and s["advbench/asr_judge"] == 0.0
    assert s["asr_keyword"] == 0.0 and s["n_advbench"] == 5
    assert s["xstest/safe_refusal_strmatch"] == 100.0 and s["xstest/safe_refusal_judge"] == 100.0
