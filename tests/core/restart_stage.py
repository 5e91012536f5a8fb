"""Run a stage's real entry point as a stage that RESTARTS instead of resuming: the negative
control of the kill tests (tests/core/test_kill_resume.py), which must fail under it.

    python -m tests.core.restart_stage set-aside <stage dir> simulate.py debug=tiny ...
    python -m tests.core.restart_stage forget <stage dir> simulate.py debug=tiny ...

- set-aside: every start finds the folder's last run stale (matrix.core.provenance.stale_reason),
  so the stage moves its outputs, LLM ledger included, to `<run>/.stale/` and starts fresh:
  the stage's own way of starting over.
- forget: every start deletes the stage folder's outputs and commit record but keeps its LLM
  ledger (llm_spend.json), so the ledger keeps adding up while the work starts over.
"""

from __future__ import annotations

import runpy
import shutil
import sys
import time
from pathlib import Path

KEEP = "llm_spend.json"


def set_aside_every_start() -> None:
    from matrix.core import provenance, stage

    real = provenance.stale_reason
    started = time.time()

    def stale_before_this_start(folder: Path, chash: str, resume_hash: str) -> str | None:
        attempt = folder / provenance.ATTEMPT
        if attempt.exists() and attempt.stat().st_mtime < started:  # not this process's
            return "the kill tests' restart control starts every attempt fresh"
        return real(folder, chash, resume_hash)

    # the name set_aside_stale calls (it imports stale_reason from matrix.core.provenance)
    stage.stale_reason = stale_before_this_start


def forget(stage_dir: Path) -> None:
    for p in stage_dir.iterdir() if stage_dir.is_dir() else ():
        if p.name != KEEP:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def main() -> None:
    mode, stage_dir, script, *overrides = sys.argv[1:]
    if mode == "set-aside":
        set_aside_every_start()
    elif mode == "forget":
        forget(Path(stage_dir))
    else:
        raise SystemExit(f"restart_stage: mode {mode!r}: use set-aside or forget")
    sys.argv = [script, *overrides]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
