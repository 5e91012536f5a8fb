"""MT-Bench-101's ability columns (perceptivity, adaptability, interactivity) and its two
aggregates, on scripted judge grades whose expected scores are computed by hand."""

import re

import pytest

from matrix.eval.benchmarks import BENCHMARKS
from matrix.eval.benchmarks.mt_bench_101 import ABILITIES
from matrix.eval.report import write_report
from tests.doubles import ScriptedLLM

# dialogue score (its minimum turn) wanted per picked dialogue; None: the first scored turn's
# grade never parses (counted as 1)
PICKS = [("CM", 6), ("CM", 8), ("AR", 3), ("SC", None), ("MR", 7), ("IC", 9)]


def _run(aggregate):
    bench = BENCHMARKS["mt_bench_101"]({"aggregate": aggregate})
    pool = bench.load()
    items, used = [], set()
    for task, _ in PICKS:
        it = next(x for x in pool if x["task"] == task and x["id"] not in used)
        used.add(it["id"])
        items.append(it)
    answers = bench.answer(ScriptedLLM(lambda chat, i: f"ANSWER-{i}"), items)
    # the k-th model call answered the k-th (dialogue, scored turn) in order
    first_call, k = {}, 0
    for it, (_, want) in zip(items, PICKS, strict=True):
        first_call[k + 1] = want
        k += len(it["scored_turns"])

    def grade(chat, i):
        call = int(re.search(r"ANSWER-(\d+)", chat[-1]["content"]).group(1))
        if call in first_call:
            want = first_call[call]
            return "no grade here" if want is None else f"Rating: [{want}]"
        return "[10]"

    judgments = bench.judge(ScriptedLLM(grade), items, answers)
    return bench.score(items, answers, judgments)


def test_abilities_by_dialogue_the_default():
    s = _run("dialogues")
    # dialogues: CM 6, 8; AR 3; SC 1 (unparsed); MR 7; IC 9
    assert s["ability/perceptivity"] == pytest.approx((6 + 8 + 3) / 3)
    assert s["ability/adaptability"] == pytest.approx((1 + 7) / 2)
    assert s["ability/interactivity"] == pytest.approx(9.0)
    assert s["score"] == pytest.approx((6 + 8 + 3 + 1 + 7 + 9) / 6)
    assert s["score_task_mean"] == pytest.approx((7 + 3 + 1 + 7 + 9) / 5)
    assert s["task/CM"] == pytest.approx(7.0) and s["judge_failures"] == 1


def test_abilities_by_task_mean_opencompass():
    s = _run("tasks")
    assert s["ability/perceptivity"] == pytest.approx((7 + 3) / 2)  # CM mean 7, AR 3
    assert s["ability/adaptability"] == pytest.approx((1 + 7) / 2)
    assert s["ability/interactivity"] == pytest.approx(9.0)
    assert s["score"] == pytest.approx(27 / 5)
    assert s["score_dialogue_mean"] == pytest.approx(34 / 6)


def test_abilities_partition_the_13_tasks_of_the_data():
    tasks = [t for ts in ABILITIES.values() for t in ts]
    assert len(tasks) == len(set(tasks)) == 13
    assert set(tasks) == {it["task"] for it in BENCHMARKS["mt_bench_101"]({}).load()}


def test_report_lists_the_abilities_beside_the_overall_score(tmp_path):
    scores = {"mt_bench_101": _run("dialogues")}
    text = write_report(tmp_path, "m", "j", scores)
    head = text.split("\n## ")[0]
    for ability in ABILITIES:
        assert f"| mt_bench_101 | ability/{ability} |" in head
