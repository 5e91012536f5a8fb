"""SIGKILL each stage's real process at random points (seed printed; MATRIX_KILL_SEED sets
it), restart it with the same command until it finishes, and check that it RESUMED: the
rows and files equal an uninterrupted run's (no row lost, duplicated or changed), the
restarts redid at most one checkpoint interval of work per kill (LLM calls from the stage's
ledger, optimizer steps from metrics.jsonl), and the attempt that finished did less work
than a whole run. A restart from scratch gives the same rows but fails the work checks.

The uninterrupted run goes in parallel with the killed ones; the LLM call cache is off, so
the resume rests on the stage's own checkpoint alone. `make soak` runs the same cases with
20 kills each (tests/core/soak.py).
"""

from __future__ import annotations

import json
import random

import pytest

from matrix.common.io import read_json, read_jsonl
from tests.conftest import RANDOM_MODEL_OVERRIDES
from tests.core.kill_cases import (
    EVAL_BENCH,
    STAGES,
    Case,
    Outcome,
    compare_rows,
    make_case,
)
from tests.core.kill_resume import (
    cli,
    file_exists,
    finish,
    jsonl_rows,
    kill_seed,
    ledger_calls,
    rows_at_least,
    rows_rewritten,
    run_with_kills,
    start,
)

KILLS = 2


def _killed_and_whole(case, tmp_path, kills=KILLS):
    seed = kill_seed(case.stage)
    whole_log, log = tmp_path / "whole.log", tmp_path / "killed.log"
    whole = start(case.cmd("whole"), whole_log)  # meanwhile, in parallel
    killed = run_with_kills(
        case.cmd("killed"),
        case.points(seed, "killed", kills),
        log,
        seed,
        snapshot=lambda: case.snapshot("killed"),
    )
    finish(whole, whole_log)
    assert killed.kills == kills, f"seed {seed}: {killed.attempts}"
    outcome = case.outcome("whole", "killed", killed)
    print(outcome)
    assert outcome.problems() == [], outcome
    return case.out("whole"), case.out("killed"), outcome


def _same_manifest(ref, out):
    a, b = read_json(ref / "manifest.json"), read_json(out / "manifest.json")
    assert b["complete"] and b["config_hash"] == a["config_hash"]
    assert b["counts"] == a["counts"]
    return b


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "train"])
def test_killed_llm_stage_resumes_without_redoing_work(stage, tmp_path, tiny_model_dir):
    case = make_case(stage, tmp_path, tiny_model_dir)
    ref, out, outcome = _killed_and_whole(case, tmp_path)
    assert outcome.rows > 0 and outcome.work > 0
    m = _same_manifest(ref, out)
    if stage == "generate":
        assert read_json(out / "state.json") == read_json(ref / "state.json")
        assert read_json(out / "stats.json") == read_json(ref / "stats.json")
        assert m["counts"]["sft"] == len(read_jsonl(out / "sft.jsonl")) == 8
        assert m["counts"]["dpo"] == len(read_jsonl(out / "dpo.jsonl")) == 2
    if stage == "evaluate":
        scores = json.loads((out / "scores.json").read_text())
        assert scores == json.loads((ref / "scores.json").read_text())
        assert m["counts"][f"{EVAL_BENCH}_n"] == 5


def test_killed_training_resumes_in_place(tmp_path, tiny_model_dir):
    """Killed between and at checkpoints, training resumes from the run folder's newest
    checkpoint (train.checkpoint.resume=auto, the default): the same metrics rows once each, the
    same tokens_seen, the same final weights (bit for bit on CPU), the same W&B run."""
    case = make_case("train", tmp_path, tiny_model_dir)
    case.extra.append("logger=wandb")  # offline (WANDB_MODE)
    ref, out, outcome = _killed_and_whole(case, tmp_path)
    m = _same_manifest(ref, out)
    assert m["counts"]["steps"] == outcome.work == 16
    assert m["resumed_from"], "the last attempt did not resume"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))
    times = [r["time"] for r in rows]
    assert times == sorted(times), "row times restart after a resume"
    assert all(r["train/tokens_per_s"] > 0 for r in rows)
    # one W&B run: every attempt's offline folder carries the id kept in the run folder
    run_id = (out / "wandb" / "run_id").read_text().strip()
    folders = sorted((out / "wandb").glob("offline-run-*"))
    assert len(folders) == outcome.kills + 1
    assert {f.name.rsplit("-", 1)[1] for f in folders} == {run_id}


# -- the whole loop ----------------------------------------------------------------------------

PIPELINE_EXTRA = [
    *RANDOM_MODEL_OVERRIDES,
    "generate.batch_size=1",  # a commit per row, so a kill can land inside generate
    "eval.chunk_size=1",
    "eval.sampling.max_new_tokens=16",
    # the 2 generated rows make one batch: 8 epochs give debug=tiny's 8 steps to kill inside
    "trainer.max_epochs=8",
]
# Row counts a kill inside a step is drawn from (after the step's first commit; debug=tiny:
# 32 events, 2 generated rows, 8 training steps checkpointed every 4, 5 answers + 5 judgments)
INSIDE = {"simulate": (9, 32), "generate": (1, 2), "train": (5, 8), "evaluate": (2, 10)}


def _pipeline_points(seed: int, cases: dict) -> list:
    """One kill inside a step and one between two steps, both drawn from `seed`, in the
    order the pipeline reaches them."""
    rng = random.Random(seed)
    order = list(STAGES)
    inside = rng.choice(order)
    between = rng.choice(order[:-1])  # after this step's manifest, before the next step
    case = cases[inside]
    n = rng.randrange(*INSIDE[inside])
    points = [
        (order.index(inside), rows_at_least(f"inside {inside}", lambda: case.watched("killed"), n)),
        (
            order.index(between) + 0.5,
            file_exists(f"after {between}", cases[between].out("killed") / "manifest.json"),
        ),
    ]
    return [p for _, p in sorted(points, key=lambda x: x[0])]


def _pipeline_snapshot(cases: dict) -> dict:
    snap = {}
    for stage, case in cases.items():
        d = case.out("killed")
        manifest = d / "manifest.json"
        snap[stage] = {
            "created": read_json(manifest)["created"] if manifest.exists() else None,
            "work": jsonl_rows(d / "metrics.jsonl") if stage == "train" else ledger_calls(d),
        }
    return snap


def test_killed_pipeline_resumes_inside_and_between_steps(tmp_path, tiny_model_dir):
    """`python -m matrix.pipeline` killed inside a random step and between two steps: the
    rerun reuses the finished steps (their manifests and LLM calls untouched), resumes the
    killed one, and ends with every stage's rows and the trained weights of an uninterrupted
    pipeline run."""
    seed = kill_seed("pipeline")
    cases = {s: Case(s, tmp_path, tiny_model_dir, []) for s in STAGES}
    cmd = lambda name: cli("pipeline", tmp_path, tiny_model_dir, name, *PIPELINE_EXTRA)  # noqa: E731
    whole_log, log = tmp_path / "whole.log", tmp_path / "killed.log"
    whole = start(cmd("whole"), whole_log)
    points = _pipeline_points(seed, cases)
    killed = run_with_kills(
        cmd("killed"), points, log, seed, snapshot=lambda: _pipeline_snapshot(cases)
    )
    finish(whole, whole_log)
    why = f"kill seed {seed}, kills at {[a.point for a in killed.attempts]}"
    assert killed.kills == 2, why
    snaps = [a.snapshot for a in killed.attempts]
    final = snaps[-1]
    for stage, case in cases.items():
        o = Outcome(stage, seed, kills=0, rows=0)  # the rows; the work is checked below
        for f in case.files("whole"):
            compare_rows(
                o, jsonl_rows(case.out("whole") / f), jsonl_rows(case.out("killed") / f), f
            )
        assert o.problems() == [], why
        assert (
            read_json(case.out("killed") / "manifest.json")["counts"]
            == read_json(case.out("whole") / "manifest.json")["counts"]
        ), (stage, why)
        # a step finished before a kill is reused, never run again
        first_done = next((s[stage] for s in snaps[:-1] if s[stage]["created"]), None)
        if first_done is not None:
            assert final[stage] == first_done, (stage, "ran again after it finished", why)
        # a step killed inside redid at most one checkpoint interval
        if stage == "train":
            redone = sum(
                rows_rewritten(a["train"]["work"], b["train"]["work"])
                for a, b in zip(snaps, snaps[1:], strict=False)
            )
        else:
            redone = final[stage]["work"] - ledger_calls(case.out("whole"))
        assert 0 <= redone <= case.interval("whole"), (stage, redone, why)
    weights = "hf_model/model.safetensors"
    assert (cases["train"].out("killed") / weights).read_bytes() == (
        cases["train"].out("whole") / weights
    ).read_bytes(), why
