"""Secrets stay out of outputs; appends survive a torn last line."""

import json

from matrix.io import JsonlLog, read_jsonl
from matrix.llm.roles import Roles
from matrix.sim.run import run_simulate
from matrix.stage import resolved_config
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


def test_atomic_writes_get_the_users_usual_file_mode(tmp_path):
    """The temp file behind an atomic write is owner-only; the written file must not be."""
    import os

    from matrix.io import write_json

    write_json(tmp_path / "state.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o666 & ~umask
