"""The kill soak (`make soak`; slow, not part of the test suite): every stage on `debug=tiny`
and the tiny random model, SIGKILLed at 20 (or --kills) random points and restarted each
time with the same command, then compared with a run that was never killed.

    python -m tests.core.soak                      # 20 kills per stage
    python -m tests.core.soak --kills 5 --stages simulate,train --seed 7

Kill points: a row count of the stage's output (simulate: a count of LLM calls) drawn per
kill from the seed (one from each of `kills` equal parts of the run), reached once the
attempt has done work of its own (an LLM call, a training step), plus a delay drawn from the
seed of 0 or up to --jitter seconds, so a kill lands mid-batch, mid-write or between a write
and its commit, never only while the process starts. The checks are the kill tests'
(tests/core/kill_checks.py): no `.stale/` folder, no ledger or commit-record counter that
falls, at most one commit interval of work per kill. Prints per stage: kills survived, rows
lost, duplicated and changed against the uninterrupted run, and the work the restarts redid
(LLM calls from the stage's ledger; training: optimizer steps) beside its bound (one
checkpoint interval per kill). Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.conftest import build_tiny_llama  # noqa: E402  (also sets the offline env vars)
from tests.core.kill_cases import STAGES, WHOLE, Outcome, make_case, run_case  # noqa: E402
from tests.core.kill_resume import SEED_ENV, finish, kill_seed, start  # noqa: E402

SOAK_TIMEOUT = 3600  # seconds one attempt may run

HEADER = (
    "| stage | kills survived | rows | rows lost | rows duplicated | rows changed "
    "| work redone | bound (1 interval/kill) | uninterrupted run | seed | minutes |"
)


def soak_stage(stage: str, base: Path, model_dir: Path, kills: int, seed: int, jitter: float):
    case = make_case(stage, base / stage, model_dir, soak=True)
    case.max_delay = jitter
    whole_log = case.base / f"{WHOLE}.log"
    case.base.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # a busy machine slows the 24-round simulate past the tests' 10-minute limit per attempt
    finish(start(case.cmd(WHOLE), whole_log), whole_log, SOAK_TIMEOUT)
    if stage == "simulate":
        case.min_own_work = case.interval(WHOLE)
    outcome = run_case(case, "killed", kills, seed, SOAK_TIMEOUT)
    return outcome, (time.monotonic() - t0) / 60


def row(o: Outcome, minutes: float) -> str:
    return (
        f"| {o.stage} | {o.kills} | {o.rows} | {o.lost} | {o.duplicated} | {o.differing} "
        f"| {o.redone} {o.unit} | {o.redone_bound} | {o.work} {o.unit} | {o.seed} "
        f"| {minutes:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--seed", type=int, default=None, help=f"kill seed (else ${SEED_ENV} or new)")
    ap.add_argument("--jitter", type=float, default=0.5, help="seconds, most a kill waits")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = ap.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="matrix-soak-"))
    print(f"soak in {base}", flush=True)
    model_dir = build_tiny_llama(base / "tiny-llama")
    lines, problems = [], []
    for stage in args.stages.split(","):
        seed = args.seed if args.seed is not None else kill_seed(stage)
        outcome, minutes = soak_stage(stage, base, model_dir, args.kills, seed, args.jitter)
        lines.append(row(outcome, minutes))
        problems += outcome.problems()
        print(lines[-1], flush=True)
    print()
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    print("\n".join(lines))
    for p in problems:
        print("FAILED:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
