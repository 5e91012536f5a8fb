"""Secrets stay out of outputs; appends and resumes survive a torn last line."""

import json

from matrix.common.io import JsonlLog, read_jsonl
from matrix.core.stage import resolved_config
from matrix.eval.run import run_evaluate
from matrix.llm.roles import Roles
from matrix.sim.run import run_simulate
from tests.conftest import compose
from tests.robustness.doubles import PromptHashLLM

SECRET = "sk-test-0123456789abcdef"


def test_api_key_from_env_never_reaches_manifest_or_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("MATRIX_TEST_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(
        "simulate",
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            f"paths.cache_dir={tmp_path}/c",
            "+llm.backends.smollm2.api_key=${oc.env:MATRIX_TEST_API_KEY}",
        ],
    )
    assert cfg.llm.backends.smollm2.api_key == SECRET  # the config does carry it
    run_simulate(cfg, Roles(cfg.llm, {"smollm2": PromptHashLLM()}))
    out = tmp_path / "tiny" / "simulate"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["llm"]["backends"]["smollm2"]["api_key"] == "***"
    assert SECRET not in json.dumps(resolved_config(cfg))  # what W&B receives as its config
    files = [p for p in out.rglob("*") if p.is_file()]
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks


def test_torn_last_line_is_dropped_on_resume(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    log.append([{"i": 0}, {"i": 1}])
    with open(log.path, "ab") as f:  # a process killed mid-write leaves half a row
        f.write(b'{"i": 2, "text": "half')
    assert log.count() == 2
    assert log.truncate(2) == 1
    log.append([{"i": 2}])
    assert read_jsonl(log.path) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_torn_line_inside_the_committed_rows_is_an_error(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    log.path.write_bytes(b'{"i": 0}\n{"i": 1')
    try:
        log.truncate(2)
    except ValueError as e:
        assert "expects 2 rows, only 1" in str(e)
    else:
        raise AssertionError("a checkpoint past the torn line must not pass")


def test_append_after_a_torn_tail_starts_a_fresh_line(tmp_path):
    """metrics.jsonl has no checkpoint: a killed process's half row must not fuse with the
    first row the restarted process appends."""
    log = JsonlLog(tmp_path / "metrics.jsonl")
    log.append([{"i": 0}])
    with open(log.path, "ab") as f:
        f.write(b'{"i": 1, "lo')
    log.append([{"i": 2}])
    assert read_jsonl(log.path) == [{"i": 0}, {"i": 2}]
    assert log.drop_torn_tail() == 0  # a whole file is left alone


def test_evaluate_resumes_past_a_torn_answer_line(tmp_path):
    """Evaluate's answers file is its own commit record (rows keyed by item id)."""
    cfg = compose(
        "evaluate",
        ["debug=tiny", f"paths.runs_dir={tmp_path}", "logger=none", "eval.chunk_size=1"],
    )
    roles = Roles(cfg.llm, {"smollm2": PromptHashLLM()})
    run_evaluate(cfg, roles)
    answers = tmp_path / "tiny" / "evaluate" / "alpaca_eval2" / "answers.jsonl"
    whole = answers.read_bytes()
    lines = whole.splitlines(keepends=True)
    answers.write_bytes(b"".join(lines[:2]) + lines[2][:15])  # killed while writing row 3
    run_evaluate(cfg, Roles(cfg.llm, {"smollm2": PromptHashLLM()}))
    assert answers.read_bytes() == whole


def test_atomic_writes_get_the_users_usual_file_mode(tmp_path):
    """The temp file behind an atomic write is owner-only; the written file must not be."""
    import os

    from matrix.common.io import write_json

    write_json(tmp_path / "state.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o666 & ~umask
