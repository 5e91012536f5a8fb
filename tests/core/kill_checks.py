"""Resumed, not restarted: what each stage's own records show across the attempts of a
killed run (tests/core/kill_resume.py runs them).

- Counters that only grow while a stage resumes: its LLM ledger (calls and tokens, every
  attempt added up) and its commit record (simulate's state.json: the committed round and
  rows; generate's state.json: the committed steps and rows; evaluate's answers, then
  judgments, each file its own commit record; train's newest step checkpoint). A restart
  drops them to zero, or, when it sets its folder aside, makes `<run>/.stale/`.
- The work each kill cost: what an attempt spent beyond what its committed progress took the
  uninterrupted run (its ledger's growth less the uninterrupted run's calls between the two
  commit points), at most one commit interval per kill.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.core.kill_resume import Killed, complete_rows, jsonl_rows, steps_redone

CKPT = re.compile(r"step(\d+)\.ckpt$")
# the commit record's progress, by stage; -1: nothing committed yet
UNIT = {
    "simulate": "committed round",  # 0: the set-up
    "generate": "committed steps",
    "evaluate": "committed answers and judgments",  # answers first, then judgments
    "train": "checkpointed step",
}
# Fields of a training metrics row that measure the clock or the process, not the computation.
CLOCK_FIELDS = (
    "time",
    "train/tokens_per_s",
    "train/tokens_per_s_per_device",
    "train/mfu",
    "train/peak_memory_gb",
)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def ledger(d: Path) -> dict[str, int]:
    """The LLM ledger's totals (every attempt added up); zeros while there is none."""
    spend = _json(d / "llm_spend.json")
    total = spend["total"] if spend else {}
    return {"LLM calls": int(total.get("calls", 0)), "LLM tokens": int(total.get("tokens", 0))}


def commit_point(stage: str, d: Path, bench: str) -> int:
    """How far the stage's commit record says it got (UNIT); -1 before its first commit."""
    if stage == "simulate":
        state = _json(d / "state.json")
        return int(state["round"]) if state else -1
    if stage == "generate":
        state = _json(d / "state.json")
        return sum(int(s["steps"]) for s in state["sets"].values()) if state else -1
    if stage == "evaluate":
        return complete_rows([d / bench / "answers.jsonl", d / bench / "judgments.jsonl"])
    steps = [
        int(m.group(1)) for p in (d / "checkpoints").glob("*.ckpt") if (m := CKPT.search(p.name))
    ]
    return max(steps, default=-1)


def committed_rows(stage: str, d: Path, bench: str) -> int:
    """Rows the commit record holds (train: none besides its checkpoints)."""
    if stage == "simulate":
        state = _json(d / "state.json")
        return int(state["n_events"]) + int(state["n_scenarios"]) if state else 0
    if stage == "generate":
        state = _json(d / "state.json")
        if not state:
            return 0
        return sum(int(s["rows"]) for s in state["sets"].values()) + int(state["filtered_rows"])
    if stage == "evaluate":
        return complete_rows([d / bench / "answers.jsonl", d / bench / "judgments.jsonl"])
    return 0


def counters(stage: str, d: Path, bench: str) -> dict[str, int]:
    """What a Watch samples for a stage folder `d`."""
    out = {} if stage == "train" else ledger(d)
    out[UNIT[stage]] = commit_point(stage, d, bench)
    if stage != "train":
        out["committed rows"] = committed_rows(stage, d, bench)
    return out


def work_at_commit(stage: str, whole: Path, bench: str) -> Callable[[int], int]:
    """LLM calls the uninterrupted run (folder `whole`) had made when it reached a commit
    point (UNIT)."""
    metrics = jsonl_rows(whole / "metrics.jsonl")
    total = ledger(whole)["LLM calls"]
    if stage == "simulate":
        rounds = [int(r["sim/llm_calls"]) for r in metrics]
        setup = total - sum(rounds)
        return lambda r: 0 if r < 0 else setup + sum(rounds[:r])
    if stage == "generate":
        calls = [0, *(int(r["gen/llm_calls"]) for r in metrics)]
        return lambda s: calls[max(s, 0)]
    n = complete_rows([whole / bench / "answers.jsonl"])
    model, judge = eval_calls_per_item(whole, bench)
    return lambda c: round(model * min(max(c, 0), n) + judge * max(c - n, 0))


def eval_calls_per_item(whole: Path, bench: str) -> tuple[float, float]:
    """The uninterrupted evaluate run's calls per item: of the model under test, of the judge."""
    roles = (_json(whole / "llm_spend.json") or {}).get("roles", {})
    n = max(complete_rows([whole / bench / "answers.jsonl"]), 1)
    calls = lambda role: int(roles.get(role, {}).get("calls", 0)) / n  # noqa: E731
    return calls("model"), calls("judge")


def redone_per_kill(stage: str, killed: Killed, whole: Path, bench: str) -> list[int]:
    """Per killed attempt, the work it did that its commit record does not keep: its
    ledger's growth less the uninterrupted run's calls between the commit point it started
    from and the one it was killed at (train: the optimizer steps the next attempt did
    again)."""
    if stage == "train":
        return steps_redone(killed)
    work = work_at_commit(stage, whole, bench)
    excess, out = 0, []
    for a in killed.attempts:
        now = a.counters["LLM calls"] - work(a.counters[UNIT[stage]])
        if a.point is not None:
            out.append(now - excess)
        excess = now
    return out


def restart_problems(stage: str, killed: Killed, whole: Path, bench: str, bound: int) -> list[str]:
    """Why the attempts of `killed` look like restarts, not resumes ([] if they do not): a
    counter that fell, a `.stale/` folder, a kill that cost more than `bound` (one commit
    interval)."""
    out = list(killed.watch.problems.values()) if killed.watch else []
    for k, redone in enumerate(redone_per_kill(stage, killed, whole, bench), 1):
        if redone > bound:
            unit = "steps" if stage == "train" else "LLM calls"
            out.append(f"kill {k} cost {redone} {unit}; one commit interval is {bound}")
    return out


# -- against the uninterrupted run -----------------------------------------------------------


@dataclass
class Outcome:
    """What one killed-and-resumed run came to, against the uninterrupted one."""

    stage: str
    seed: int
    kills: int
    rows: int  # rows of the uninterrupted run's compared files
    lost: int = 0  # rows (by id) of the uninterrupted run missing after the resumes
    duplicated: int = 0  # extra copies of a row id
    differing: int = 0  # rows (by id) present in both with different content
    redone: int = 0  # work done twice: LLM calls (train: optimizer steps)
    redone_bound: int = 0  # one checkpoint interval per kill
    work: int = 0  # the uninterrupted run's work, in the same unit
    last_attempt_work: int = 0  # work of the attempt that finished
    unit: str = "calls"
    files_differing: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # kill_checks.restart_problems

    def problems(self) -> list[str]:
        """Why this run does not count as resumed-without-loss ([] if it does)."""
        out = []
        if self.lost or self.duplicated or self.differing or self.files_differing:
            out.append(
                f"rows lost {self.lost}, duplicated {self.duplicated}, differing "
                f"{self.differing}, files differing {self.files_differing}"
            )
        if self.redone > self.redone_bound:
            out.append(
                f"{self.redone} {self.unit} redone over {self.kills} kills; at most one "
                f"checkpoint interval per kill ({self.redone_bound})"
            )
        if self.kills and not self.last_attempt_work < self.work:
            out.append(
                f"the last attempt did {self.last_attempt_work} {self.unit}, an uninterrupted "
                f"run {self.work}: it started over"
            )
        out += self.restarted
        return [f"{self.stage} (kill seed {self.seed}): {p}" for p in out]


def row_key(row: dict, file: str):
    if file == "metrics.jsonl":
        return (row.get("step"), tuple(sorted(k for k in row if k.startswith("val/"))))
    return row["id"]


def compare_rows(out: Outcome, ref: list[dict], got: list[dict], file: str) -> None:
    clock = CLOCK_FIELDS if file == "metrics.jsonl" else ()
    strip = lambda r: {k: v for k, v in r.items() if k not in clock}  # noqa: E731
    want = {row_key(r, file): strip(r) for r in ref}
    counts = Counter(row_key(r, file) for r in got)
    have = {row_key(r, file): strip(r) for r in got}
    out.rows += len(want)
    out.lost += sum(k not in have for k in want)
    out.duplicated += sum(n - 1 for n in counts.values())
    out.differing += sum(k in have and have[k] != v for k, v in want.items())
    if [row_key(r, file) for r in got] != [row_key(r, file) for r in ref]:
        out.files_differing.append(f"{file} (order)")
