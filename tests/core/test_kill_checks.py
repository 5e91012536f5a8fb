"""The kill tests' resume checks on records written by hand (no stage runs): what the Watch
flags, and the work a kill cost (tests/core/kill_checks.py)."""

from __future__ import annotations

import json

from tests.core.kill_checks import counters, redone_per_kill, restart_problems
from tests.core.kill_resume import Attempt, Killed, Watch


def test_watch_flags_a_counter_that_falls_and_a_stale_folder(tmp_path):
    values = iter([{"calls": 3}, {"calls": 7}, {"calls": 7}, {"calls": 2}, {"calls": 9}])
    watch = Watch(lambda: next(values), tmp_path / ".stale")
    for attempt in (1, 1, 2, 2):
        watch.sample(attempt)
    assert watch.problems == {"calls": "calls fell from 7 (attempt 1) to 2 (attempt 2)"}
    (tmp_path / ".stale").mkdir()
    watch.sample(3)
    assert ".stale/ appeared (attempt 3)" in watch.problems[".stale"]


def test_watch_passes_counters_that_only_grow(tmp_path):
    values = iter([{"calls": 0}, {"calls": 0}, {"calls": 4}, {"calls": 4}, {"calls": 11}])
    watch = Watch(lambda: next(values), tmp_path / ".stale")
    for attempt in (1, 1, 2, 2, 3):
        watch.sample(attempt)
    assert watch.problems == {}


def _generate_folder(d, steps_done: int, calls: int, rows: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    state = {"sets": {"general": {"steps": steps_done, "rows": rows}}, "filtered_rows": 0}
    (d / "state.json").write_text(json.dumps(state))
    (d / "llm_spend.json").write_text(json.dumps({"total": {"calls": calls, "tokens": calls}}))


def test_work_per_kill_is_what_the_commit_record_does_not_keep(tmp_path):
    """generate, 4 calls a step in the uninterrupted run: a kill after 2 steps and 3 calls of
    the third costs 3 calls; an attempt that starts over from step 0 costs what it redid."""
    whole = tmp_path / "whole"
    _generate_folder(whole, 5, 20, 5)
    (whole / "metrics.jsonl").write_text(
        "".join(json.dumps({"gen/llm_calls": 4 * s}) + "\n" for s in range(1, 6))
    )
    c = lambda steps, calls: {"LLM calls": calls, "committed steps": steps}  # noqa: E731
    resumed = Killed(0, [Attempt("a", counters=c(2, 11)), Attempt(None, counters=c(5, 23))])
    assert redone_per_kill("generate", resumed, whole, "") == [3]
    assert restart_problems("generate", resumed, whole, "", bound=4) == []
    # the second attempt redid steps 1-2 before it was killed after its fourth step (a
    # restart that kept its ledger): it spent 16 calls for 2 steps of progress
    restarted = Killed(
        0,
        [
            Attempt("a", counters=c(2, 8)),
            Attempt("b", counters=c(4, 24)),
            Attempt(None, counters=c(5, 28)),
        ],
    )
    assert redone_per_kill("generate", restarted, whole, "") == [0, 8]
    assert restart_problems("generate", restarted, whole, "", bound=4) == [
        "kill 2 cost 8 LLM calls; one commit interval is 4"
    ]


def test_counters_read_the_commit_record(tmp_path):
    d = tmp_path / "generate"
    assert counters("generate", d, "") == {
        "LLM calls": 0,
        "LLM tokens": 0,
        "committed steps": -1,
        "committed rows": 0,
    }
    _generate_folder(d, 3, 12, 2)
    assert counters("generate", d, "") == {
        "LLM calls": 12,
        "LLM tokens": 12,
        "committed steps": 3,
        "committed rows": 2,
    }
