"""Each stage as a kill-and-resume case, shared by the kill tests (a few kills) and the soak
(`make soak`, 20 and more): its command on `debug=tiny` and the tiny random model, where
kills land, which rows must come out as an uninterrupted run's, and how much work a kill may
cost (one checkpoint interval: a simulation round, a generate step, an evaluate chunk, the
training steps between two checkpoints).

Kill points are drawn from the seed: a row count of an output (simulate in the soak: a count
of LLM calls), then a delay of 0 (the kill lands right after that write: between a row's
append and the commit record that follows it, or right after a commit) or of up to
`max_delay` seconds (inside the LLM batch, the write or the training step that follows)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import RANDOM_MODEL_OVERRIDES
from tests.core.kill_checks import (
    Outcome,
    compare_rows,
    counters,
    eval_calls_per_item,
    restart_problems,
)
from tests.core.kill_resume import (
    Killed,
    Point,
    Watch,
    cli,
    finish,
    jsonl_rows,
    ledger_calls,
    rows_at_least,
    rows_rewritten,
    run_with_kills,
    start,
    steps_redone,
    thresholds,
)

STAGES = ("simulate", "generate", "train", "evaluate")
WHOLE = "whole"  # the uninterrupted run's name
EVAL_BENCH = "alpaca_eval2"  # eval=demo: 5 items under debug=tiny
TRAIN_EVERY = 4
# The soak's runs are longer than the tests', so that every kill lands on a new row count.
SOAK_EXTRA = {
    # 8 agents x 36 rounds: a restart that must get past one checkpoint (min_own_work) before
    # its kill commits a round, so 20 kills need more than 20 rounds to land in new work (24
    # rounds gave 14: a run ends before its later kill points)
    # (the group memory then outgrows the tiny model's 2,048-token context: cut prompts' start)
    "simulate": ["simulation.max_rounds=36", "+llm.backends.smollm2.overflow=truncate_left"],
    "generate": [
        "generator.sets.general.target=10",
        "generator.sets.complex.target=4",
        "generator.sets.multi_turn.target=4",
        "generator.sets.safety.target=4",
    ],
    "train": [],
    "evaluate": ["eval.limit=12", f"eval.benchmarks.{EVAL_BENCH}.limit=12"],
}


@dataclass
class Case:
    """One stage run twice under `base`: `whole` (never killed) and `killed`."""

    stage: str
    base: Path
    model_dir: Path
    extra: list[str]
    soak: bool = False
    # LLM calls a simulate attempt makes before its kill point counts (did_work): the soak sets
    # one checkpoint interval, so a restart gets past the round it redoes before it is killed;
    # otherwise the redone calls alone would reach the next cumulative kill point every time
    min_own_work: int = 1
    max_delay: float = 0.5  # seconds a kill may wait after its point (the soak's --jitter)
    # the negative control: the killed run's stage restarts on every start instead of
    # resuming (tests.core.restart_stage: "set-aside" or "forget")
    restart: str | None = None

    # -- commands and folders --------------------------------------------------------------
    def cmd(self, name: str) -> list[str]:
        script = f"{self.stage}.py"
        cmd = cli(script, self.base, self.model_dir, name, *self.extra)
        if self.restart and name != WHOLE:
            cmd[1:1] = ["-m", "tests.core.restart_stage", self.restart, str(self.out(name))]
        return cmd

    def out(self, name: str) -> Path:
        return self.base / name / self.stage

    # -- where kills land --------------------------------------------------------------------
    def watched(self, name: str) -> list[Path]:
        d = self.out(name)
        if self.stage == "simulate":
            return [d / "events.jsonl"]
        if self.stage == "generate":
            return sorted((d / "sets").glob("*.jsonl"))
        if self.stage == "train":
            return [d / "metrics.jsonl"]
        return [d / EVAL_BENCH / "answers.jsonl", d / EVAL_BENCH / "judgments.jsonl"]

    @property
    def train_steps(self) -> int:
        return 32 if self.soak else 16

    def row_range(self) -> tuple[int, int]:
        """Row counts kills are drawn from, before the last row; in the tests after the
        first commit (so a restart would have work to redo), in the soak from the first row."""
        lo, hi = {
            "simulate": (9, 32),  # 8 agents x 4 rounds; round 1 is committed once round 2 writes
            "generate": (2, 22 if self.soak else 10),  # tests: general 4, complex 2, ...
            "train": (TRAIN_EVERY + 1, self.train_steps),  # a metrics row per step
            # the answers, then the judgments; before the last judgment, after which the
            # process ends too soon for a kill to land
            "evaluate": (2, 23 if self.soak else 9),
        }[self.stage]
        return (1, hi) if self.soak else (lo, hi)

    def points(self, seed: int, name: str, kills: int, whole: str | None = None) -> list[Point]:
        """Kill points: row counts of the watched outputs. Simulate is killed at LLM call
        counts instead, from the ledger (`whole`: the finished uninterrupted run that gives
        the counts): its rows come in one burst per round, which would put every kill at a
        round's end, while the calls of a round come in several batches. They fall before
        the last round's calls (the ledger adds up every attempt's, so the attempt after any
        kill still has a round to be killed in), and in the tests after the set-up's."""
        rng = random.Random(seed)
        if self.stage == "simulate" and whole is not None:
            d, ref = self.out(name), self.out(whole)
            rounds = [int(r["sim/llm_calls"]) for r in jsonl_rows(ref / "metrics.jsonl")]
            total = ledger_calls(ref)
            lo = 1 if self.soak else total - sum(rounds) + 1
            at = thresholds(rng, lo, total - rounds[-1], kills)
            points = [Point(f"{n} LLM calls", lambda n=n: ledger_calls(d) >= n) for n in at]
        else:
            lo, hi = self.row_range()
            at = thresholds(rng, lo, hi, kills)
            points = [rows_at_least(self.stage, lambda: self.watched(name), n) for n in at]
        # a third right after the write, the rest inside what follows; never after the last
        # point (the run could end first)
        delays = [0.0 if rng.random() < 1 / 3 else rng.uniform(0, self.max_delay) for _ in at]
        delays[-1] = 0.0
        return [Point(p.name, p.reached, d) for p, d in zip(points, delays, strict=True)]

    def watch(self, name: str) -> Watch:
        """What must only grow across the attempts of run `name`, and its `.stale/` folder."""
        d = self.out(name)
        return Watch(lambda: counters(self.stage, d, EVAL_BENCH), self.base / name / ".stale")

    # -- work --------------------------------------------------------------------------------
    def snapshot(self, name: str):
        """What an attempt left: training's metrics rows; the ledger's calls (evaluate: and
        the answers written)."""
        d = self.out(name)
        if self.stage == "train":
            return jsonl_rows(d / "metrics.jsonl")
        if self.stage == "evaluate":
            return ledger_calls(d), len(jsonl_rows(d / EVAL_BENCH / "answers.jsonl"))
        return ledger_calls(d)

    def did_work(self, before, now) -> bool:
        """Whether an attempt did work of its own between two snapshots: a training step
        logged (a row that is not one of the rows it started with), an LLM call recorded,
        an answer written."""
        if self.stage == "train":
            return now != before[: len(now)]
        if self.stage == "evaluate":
            return now[0] > before[0] or now[1] > before[1]
        if self.stage == "simulate":
            return now - before >= self.min_own_work
        return now > before

    def files(self, name: str) -> list[str]:
        d = self.out(name)
        if self.stage == "simulate":
            return ["events.jsonl", "scenarios.jsonl"]
        if self.stage == "generate":
            sets = sorted(f"sets/{p.name}" for p in (d / "sets").glob("*.jsonl"))
            return ["sft.jsonl", "dpo.jsonl", "filtered.jsonl", *sets]
        if self.stage == "train":
            return ["metrics.jsonl"]
        return [f"{EVAL_BENCH}/answers.jsonl", f"{EVAL_BENCH}/judgments.jsonl"]

    def interval(self, whole: str) -> int:
        """The most work one checkpoint interval of the uninterrupted run took."""
        d = self.out(whole)
        metrics = jsonl_rows(d / "metrics.jsonl")
        if self.stage == "simulate":
            rounds = [int(r["sim/llm_calls"]) for r in metrics]
            return max([*rounds, ledger_calls(d) - sum(rounds)])  # the set-up: interval 0
        if self.stage == "generate":
            calls = [0, *(int(r["gen/llm_calls"]) for r in metrics)]
            return max(b - a for a, b in zip(calls, calls[1:], strict=False))
        if self.stage == "train":
            return TRAIN_EVERY
        return max(math.ceil(c) for c in eval_calls_per_item(d, EVAL_BENCH))  # one item (chunk 1)

    def outcome(self, whole: str, name: str, killed: Killed) -> Outcome:
        ref, got = self.out(whole), self.out(name)
        o = Outcome(self.stage, killed.seed, killed.kills, rows=0)
        for f in self.files(whole):
            compare_rows(o, jsonl_rows(ref / f), jsonl_rows(got / f), f)
        snaps = [a.snapshot for a in killed.attempts]
        o.redone_bound = killed.kills * self.interval(whole)
        o.restarted = restart_problems(self.stage, killed, ref, EVAL_BENCH, self.interval(whole))
        if self.stage == "train":
            o.unit = "steps"
            o.work = len(jsonl_rows(ref / "metrics.jsonl"))
            o.redone = sum(steps_redone(killed))
            kept = len(snaps[-2]) - rows_rewritten(snaps[-2], snaps[-1]) if len(snaps) > 1 else 0
            o.last_attempt_work = len(snaps[-1]) - kept
            for part in ("model.safetensors", "config.json"):
                a, b = ref / "hf_model" / part, got / "hf_model" / part
                if not b.exists() or a.read_bytes() != b.read_bytes():
                    o.files_differing.append(f"hf_model/{part}")
        else:  # the ledger: every role's calls (evaluate's model under test too), all attempts
            calls = [s[0] if self.stage == "evaluate" else s for s in snaps]
            o.work = ledger_calls(ref)
            o.redone = calls[-1] - o.work
            o.last_attempt_work = calls[-1] - (calls[-2] if len(calls) > 1 else 0)
        return o


def make_case(stage: str, base: Path, model_dir: Path, soak: bool = False) -> Case:
    """The stage's case on `debug=tiny`, its inputs written under base/inputs; `soak`: the
    longer runs of the soak."""
    inputs = base / "inputs"
    if stage == "simulate":
        extra: list[str] = []
    elif stage == "generate":
        from tests.doubles import write_sim_dir

        sim = inputs / "sim"
        if not sim.exists():
            write_sim_dir(sim)
        extra = [
            f"generate.simulation_dir={sim}",
            "generator=tiny",  # general 4, complex 2 (DPO), multi_turn 2, safety 2
            "generate.limit=null",
            "generate.batch_size=1",  # a checkpoint per row: kills land between and within steps
            *RANDOM_MODEL_OVERRIDES,
            *(f"llm.roles.{r}.max_new_tokens=16" for r in ("generator", "responder", "rejecter")),
        ]
    elif stage == "train":
        from tests.train.conftest import write_sft

        inputs.mkdir(parents=True, exist_ok=True)
        data = inputs / "sft.jsonl"
        if not data.exists():
            write_sft(data, 48, seed=3, max_words=20)
        extra = [
            f"data.path={data}",
            "data.packing=false",  # 48 rows / 4 = 12 steps an epoch: the kills cross epochs
            f"trainer.max_steps={32 if soak else 16}",
            "trainer.max_epochs=3",
            "data.generate_run=inputs",  # data.sft_path (unused) would hash the run name
            f"train.checkpoint.every_n_steps={TRAIN_EVERY}",
            "train.checkpoint.keep=-1",
            "trainer.deterministic=true",
        ]
    elif stage == "evaluate":
        # every answer and judgment appended on its own; short answers (this tests resuming)
        extra = ["eval.chunk_size=1", "eval.sampling.max_new_tokens=16"]
    else:
        raise ValueError(stage)
    return Case(stage, base, model_dir, extra + (SOAK_EXTRA[stage] if soak else []), soak)


def run_case(case: Case, name: str, kills: int, seed: int, timeout: float = 600) -> Outcome:
    """Kill `case`'s run `name` at `kills` points drawn from `seed`, restart it until it
    finishes, and measure it against the uninterrupted run (started beside it unless it
    finished before: one serves every killed run of the same case). The outcome's `kills`:
    the kills that landed (a run that ends before a point is not killed there)."""
    case.base.mkdir(parents=True, exist_ok=True)
    whole_log = case.base / f"{WHOLE}.log"
    done = (case.out(WHOLE) / "manifest.json").exists()
    if not done and case.stage == "simulate":  # its kill points come from the whole run's ledger
        finish(start(case.cmd(WHOLE), whole_log), whole_log, timeout)
        done = True
    whole = None if done else start(case.cmd(WHOLE), whole_log)
    try:
        killed = run_with_kills(
            case.cmd(name),
            case.points(seed, name, kills, whole=WHOLE if done else None),
            case.base / f"{name}.log",
            seed,
            snapshot=lambda: case.snapshot(name),
            timeout=timeout,
            did_work=case.did_work,
            watch=case.watch(name),
        )
    except BaseException:
        if whole is not None:  # the next test of the case starts it again
            whole.kill()
            whole.wait()
        raise
    if whole is not None:
        finish(whole, whole_log, timeout)
    attempts = [(a.point, round(a.seconds, 1)) for a in killed.attempts]
    print(f"{case.stage} {name} (kill seed {seed}): attempts {attempts}", flush=True)
    return case.outcome(WHOLE, name, killed)
