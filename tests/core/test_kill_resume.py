"""SIGKILL each stage's real process at random points (seed printed; MATRIX_KILL_SEED sets
it), restart it with the same command until it finishes, and check that it RESUMED: the
rows and files equal an uninterrupted run's (no row lost, duplicated or changed); no
`.stale/` folder appeared beside it; its LLM ledger (calls, tokens) and its committed rows
and progress never fell, from one sample to the next, across the attempts; each kill cost at
most one commit interval of work and the restarts together at most one per kill; the attempt
that finished did less work than a whole run.

Five kills per stage (the soak, in the default suite; `make soak` runs 20 on longer runs,
tests/core/soak.py); kills land right after a write, inside the LLM batch, write or training
step that follows, or between a row's append and its commit. The uninterrupted run of a
stage goes beside the first killed run and serves every test of the stage; the LLM call
cache is off, so the resume rests on the stage's own checkpoint alone.

The negative controls run the same harness over a stage that restarts at every start
(tests/core/restart_stage.py) and expect its checks to fail: its rows come out right, so
only the resume checks can tell.
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
    run_case,
)
from tests.core.kill_checks import UNIT
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

KILLS = 5
CONTROL_KILLS = 1


@pytest.fixture(scope="module")
def case_base(tmp_path_factory):
    """A folder per stage, shared by the stage's tests: its inputs and uninterrupted run."""
    bases: dict = {}
    return lambda stage: bases.setdefault(stage, tmp_path_factory.mktemp(f"kill-{stage}"))


def assert_resumed(outcome: Outcome) -> None:
    assert outcome.problems() == [], "\n".join(outcome.problems())


def _killed(case: Case, kills: int = KILLS, name: str = "killed") -> Outcome:
    outcome = run_case(case, name, kills, kill_seed(f"{case.stage} {name}"))
    print(outcome)
    assert outcome.kills == kills, f"kill seed {outcome.seed}: {outcome.kills} of {kills} landed"
    return outcome


def _same_manifest(ref, out):
    a, b = read_json(ref / "manifest.json"), read_json(out / "manifest.json")
    assert b["complete"] and b["config_hash"] == a["config_hash"]
    assert b["counts"] == a["counts"]
    return b


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "train"])
def test_killed_llm_stage_resumes_without_redoing_work(stage, case_base, tiny_model_dir):
    case = make_case(stage, case_base(stage), tiny_model_dir)
    outcome = _killed(case)
    assert_resumed(outcome)
    assert outcome.rows > 0 and outcome.work > 0
    ref, out = case.out("whole"), case.out("killed")
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


def test_killed_training_resumes_in_place(case_base, tiny_model_dir):
    """Killed between and at checkpoints, training resumes from the run folder's newest
    checkpoint (train.checkpoint.resume=auto, the default): the same metrics rows once each, the
    same tokens_seen, the same final weights (bit for bit on CPU), the same W&B run."""
    case = make_case("train", case_base("train"), tiny_model_dir)
    case.extra.append("logger=wandb")  # offline (WANDB_MODE); the rows do not depend on it
    outcome = _killed(case)
    assert_resumed(outcome)
    ref, out = case.out("whole"), case.out("killed")
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


# tests.core.restart_stage's modes: set-aside for every stage; forget (no .stale/ folder, the
# ledger kept) for one, as each stage's commit record is read the same way in both
CONTROLS = [(s, "set-aside") for s in STAGES] + [("generate", "forget")]


@pytest.mark.parametrize(("stage", "mode"), CONTROLS)
def test_kill_checks_fail_when_the_stage_restarts(stage, mode, case_base, tiny_model_dir):
    """The negative control: the same harness over a stage that starts fresh at every start
    (tests.core.restart_stage) fails, on the resume checks alone (its rows come out right).
    Set aside, the stage leaves `.stale/`; restarted over its own ledger (forget), it leaves
    none and its ledger keeps growing, and the commit record that falls still tells."""
    case = make_case(stage, case_base(stage), tiny_model_dir)
    case.restart = mode
    outcome = _killed(case, CONTROL_KILLS, f"restart-{mode}")
    assert (outcome.lost, outcome.duplicated, outcome.differing) == (0, 0, 0), outcome
    with pytest.raises(AssertionError) as failed:
        assert_resumed(outcome)
    why = str(failed.value)
    print(why)
    # the commit record fell: its rows, or (a kill before the first rows: a simulate round,
    # a generate step) the stage's own progress mark
    assert any(f"{c} fell from" in why for c in ("committed rows", UNIT[stage])), why
    assert (".stale/ appeared" in why) == (mode == "set-aside"), why
    if mode == "forget":
        assert "LLM calls fell" not in why, why  # the ledger was kept: it did not tell


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
