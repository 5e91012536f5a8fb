"""SIGKILL a generate or evaluate process at seeded row counts, restart it with the same
command until it finishes, and compare with a run that was never killed.

Each stage runs as a subprocess through its real CLI on the tiny random model, with the LLM
call cache off, so the resume rests on the stage's own checkpoint (generate: state.json)
or its id-keyed outputs (evaluate) alone. The uninterrupted run goes in parallel with the
killed ones. (Simulate's twin is in tests/sim/test_simulate_stage.py.)
"""

import json
import sys

from matrix.common.io import read_json, read_jsonl
from tests.conftest import RANDOM_MODEL_OVERRIDES, ROOT, tiny_llm_overrides
from tests.gen.doubles import write_sim_dir
from tests.kill_resume import complete_rows, finish, kill_when, start, thresholds


def _cli(script, tmp_path, model_dir, name, *extra):
    return [
        sys.executable,
        str(ROOT / script),
        "debug=tiny",
        f"paths.runs_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}/cache",
        f"run.name={name}",
        "logger=none",
        "llm.cache.enabled=false",
        *tiny_llm_overrides(model_dir),
        *extra,
    ]


def _kill_and_finish(script, tmp_path, model_dir, extra, watched, total, seed):
    """(uninterrupted dir, killed-and-resumed dir, row counts seen at the kills)."""
    log = tmp_path / "log.txt"
    whole = start(_cli(script, tmp_path, model_dir, "whole", *extra), log)
    cmd = _cli(script, tmp_path, model_dir, "killed", *extra)
    stage = script.removesuffix(".py")
    out = tmp_path / "killed" / stage
    seen = kill_when(cmd, lambda: complete_rows(watched(out)), thresholds(seed, total, 2), log)
    finish(start(cmd, log), log)
    finish(whole, log)
    return tmp_path / "whole" / stage, out, seen


def _same_manifest(ref, out):
    a, b = read_json(ref / "manifest.json"), read_json(out / "manifest.json")
    assert b["complete"] and b["config_hash"] == a["config_hash"]
    assert b["counts"] == a["counts"]
    return b


def test_generate_killed_at_random_rows_resumes_to_the_same_rows(tmp_path, tiny_model_dir):
    sim = write_sim_dir(tmp_path / "sim")
    extra = [
        f"simulation_dir={sim}",
        "generator=tiny",  # general 4, complex 2 (DPO), multi_turn 2, safety 2
        "generate.limit=null",
        "generate.batch_size=1",  # a checkpoint per row: kills land between and within steps
        *RANDOM_MODEL_OVERRIDES,
        *(f"llm.roles.{r}.max_new_tokens=16" for r in ("generator", "responder", "rejecter")),
    ]
    ref, out, seen = _kill_and_finish(
        "generate.py",
        tmp_path,
        tiny_model_dir,
        extra,
        lambda d: (d / "sets").glob("*.jsonl"),
        total=10,
        seed=1,  # kills at >= 2 rows (set general) and >= 9 rows (set safety)
    )
    assert len(seen) == 2, seen
    sets = sorted(p.name for p in (ref / "sets").glob("*.jsonl"))
    files = ["sft.jsonl", "dpo.jsonl", "filtered.jsonl", *(f"sets/{s}" for s in sets)]
    for name in files:
        a = read_jsonl(ref / name) if (ref / name).exists() else []
        b = read_jsonl(out / name) if (out / name).exists() else []
        assert len({r["id"] for r in b}) == len(b), f"{name}: duplicated ids"
        assert b == a, f"{name}: resumed run differs from the uninterrupted one"
    assert read_json(out / "state.json") == read_json(ref / "state.json")
    assert read_json(out / "stats.json") == read_json(ref / "stats.json")
    m = _same_manifest(ref, out)
    assert m["counts"]["sft"] == len(read_jsonl(out / "sft.jsonl")) == 8
    assert m["counts"]["dpo"] == len(read_jsonl(out / "dpo.jsonl")) == 2


def test_evaluate_killed_at_random_rows_resumes_to_the_same_scores(tmp_path, tiny_model_dir):
    bench = "alpaca_eval2"  # eval=demo, 5 items under debug=tiny
    ref, out, seen = _kill_and_finish(
        "evaluate.py",
        tmp_path,
        tiny_model_dir,
        # every answer and judgment appended on its own; short answers (this tests resuming)
        ["eval.chunk_size=1", "eval.sampling.max_new_tokens=16"],
        lambda d: [d / bench / "answers.jsonl", d / bench / "judgments.jsonl"],
        total=10,  # 5 answers, then 5 judgments
        seed=5,  # kills at >= 3 rows (answering) and >= 7 rows (judging)
    )
    assert len(seen) == 2, seen
    for kind in ("answers", "judgments"):
        a, b = read_jsonl(ref / bench / f"{kind}.jsonl"), read_jsonl(out / bench / f"{kind}.jsonl")
        assert [r["id"] for r in b] == [r["id"] for r in a] and len(b) == 5, kind
        assert b == a, f"{kind}: resumed run differs from the uninterrupted one"
    scores = json.loads((out / "scores.json").read_text())
    assert scores == json.loads((ref / "scores.json").read_text())
    m = _same_manifest(ref, out)
    assert m["counts"][f"{bench}_n"] == 5
