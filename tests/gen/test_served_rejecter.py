"""DPO rejected answers from a model folder served by a vLLM server the stage starts and stops
(`generate.rejected_backend`, conf/rejected_backend/vllm.yaml, matrix.llm.served_folder).

The stage runs for real here (run_generate, its filters, state and manifest), and so does the
server's lifecycle: `LocalServer` starts a separate process on a free port, waits until it
answers and stops its process group. The process is a stand-in for vLLM that answers over
real HTTP (tests/llm/fake_vllm.py), so these tests cost seconds; the same step on a real vLLM
CPU server serving the embedded SmolLM2 is test_served_rejecter_vllm.py (marked `server`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_stage
from matrix.gen.run import run_generate
from matrix.llm.errors import LLMError, ServerDied
from tests.conftest import free_port
from tests.doubles import SCRIPTED_ROLES, compose_generate, read_rows, scripted_backends
from tests.llm.fake_vllm import fake_vllm_python


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A model folder as train.py exports one (the stand-in server never reads the weights)."""
    d = tmp_path / "train_sft" / "hf_model"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    return d


def _cfg(tmp_path: Path, sim_dir: Path, folder: Path, port: int, *extra: str):
    return compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=dpo_complex",
        "generator.sets.complex.target=4",
        "generate.batch_size=2",
        "generate.oversample=1",
        f"generate.rejected_model={folder}",
        "rejected_backend=vllm",
        f"generate.rejected_backend.port={port}",
        f"generate.rejected_backend.log_path={tmp_path / 'vllm.log'}",
        "generate.rejected_backend.ready_timeout=60",
        "generate.rejected_backend.retry_max_wait=0.2",
        "generate.filters.language=null",
        "generate.filters.min_response_chars=1",
        "llm.cache.enabled=false",
        *SCRIPTED_ROLES[:2],
        *extra,
    )


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_rejected_answers_go_through_the_server_the_stage_starts_and_stops(
    tmp_path, sim_dir, folder, monkeypatch
):
    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    port = free_port()
    result = run_generate(_cfg(tmp_path, sim_dir, folder, port), backends=scripted_backends())
    assert not _answers(port)  # stopped when the stage ended
    out = tmp_path / "runs" / "default" / "generate"
    rows = read_rows(out / "dpo.jsonl")
    assert len(rows) == 4
    for r in rows:
        assert r["rejected"] == "served: " + r["prompt"][-1]["content"]
        assert r["lineage"]["models"]["rejecter"] == str(folder)  # as in process
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["rejecter"] == str(folder)
    assert manifest["rejected_model"] == {
        "folder": str(folder),
        "backend": "vllm",
        "served_name": str(folder),
        "base_url": f"http://127.0.0.1:{port}/v1",
        "server": "started by the stage",
    }
    assert "rejected_model" in manifest["inputs"]  # the folder, hashed, as in process
    assert result["llm"]["roles"]["rejecter"]["calls"] >= 4
    posts = (tmp_path / "vllm.log").read_text().count("POST /v1/chat/completions")
    assert posts == result["llm"]["roles"]["rejecter"]["calls"]


def test_a_server_that_dies_mid_step_fails_the_step_and_the_rerun_resumes(
    tmp_path, sim_dir, folder, monkeypatch
):
    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    port = free_port()
    cfg = _cfg(tmp_path, sim_dir, folder, port)
    monkeypatch.setenv("FAKE_VLLM_DIE_AT", "3")  # the first step's 2 answers, then it dies
    with pytest.raises(ServerDied) as e:
        run_generate(cfg, backends=scripted_backends())
    msg = str(e.value)
    assert f"the vLLM server serving {folder}" in msg and "mid-step" in msg
    assert "RuntimeError: fake engine failure" in msg
    assert "Rerun the same command: the stage resumes where it stopped" in msg
    assert not _answers(port)
    out = tmp_path / "runs" / "default" / "generate"
    first = read_rows(out / "sets" / "complex.jsonl")
    assert len(first) == 2  # the step before the failure is committed

    monkeypatch.delenv("FAKE_VLLM_DIE_AT")
    run_generate(cfg, backends=scripted_backends())
    rows = read_rows(out / "dpo.jsonl")
    assert len(rows) == 4 and rows[:2] == first  # resumed: the first rows kept, none twice
    assert not _answers(port)


def test_a_failing_step_stops_the_server(tmp_path, sim_dir, folder, monkeypatch):
    """An error that is not the server's (here the generator's) still stops the server."""
    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    port = free_port()
    backends = scripted_backends()
    calls = {"n": 0}
    real = backends["gen"].generate

    def generate_then_fail(chats, sampling):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("generator failed")
        return real(chats, sampling)

    backends["gen"].generate = generate_then_fail
    with pytest.raises(RuntimeError, match="generator failed"):
        run_generate(_cfg(tmp_path, sim_dir, folder, port), backends=backends)
    assert calls["n"] == 2 and (tmp_path / "vllm.log").read_text().count("POST") == 2
    assert not _answers(port)


def test_a_server_that_cannot_start_is_named(tmp_path, sim_dir, folder, monkeypatch):
    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    monkeypatch.setenv("FAKE_VLLM_FAIL_START", "1")
    with pytest.raises(LLMError) as e:
        run_generate(_cfg(tmp_path, sim_dir, folder, free_port()), backends=scripted_backends())
    msg = str(e.value)
    assert f"the vLLM server for {folder} (generate.rejected_backend) did not start" in msg
    assert "ValueError: fake model that cannot load" in msg  # its log's tail
    assert "rejected_backend=in_process" in msg


def test_a_server_a_killed_run_left_is_used_then_stopped(tmp_path, sim_dir, folder, monkeypatch):
    """A SIGKILLed stage cannot stop its server (it runs in a session of its own): the rerun
    finds it on the port, serving the folder under the name the stage gives it, uses it
    instead of starting a second one, and stops it at the end."""
    from matrix.llm.server import LocalServer

    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    port = free_port()
    left = LocalServer(port, folder, str(folder), log_path=tmp_path / "vllm.log").start()
    left.wait_ready(60)
    run_generate(_cfg(tmp_path, sim_dir, folder, port), backends=scripted_backends())
    assert left.proc.wait(5) is not None and not _answers(port)
    manifest = json.loads((tmp_path / "runs/default/generate/manifest.json").read_text())
    assert manifest["rejected_model"]["server"] == "left running by a killed run of the stage"
    assert (tmp_path / "vllm.log").read_text().count("POST /v1/chat/completions") == 4


def test_a_folder_without_weights_is_named_before_any_server_starts(
    tmp_path, sim_dir, folder, monkeypatch
):
    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="config.json but no weights") as e:
        run_generate(_cfg(tmp_path, sim_dir, folder, free_port()), backends=scripted_backends())
    assert "generate.rejected_model" in str(e.value)
    assert not (tmp_path / "vllm.log").exists()


def _no_vllm_venv(tmp_path: Path, monkeypatch) -> None:
    """Neither MATRIX_VLLM_PYTHON, the project nor the running venv's neighbour holds one."""
    import sys

    import matrix.llm.server as server

    monkeypatch.delenv("MATRIX_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(server, "REPO", tmp_path / "repo")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env" / ".venv"))


def test_no_vllm_venv_is_named_with_its_fix(tmp_path, sim_dir, folder, monkeypatch):
    _no_vllm_venv(tmp_path, monkeypatch)
    cfg = _cfg(tmp_path, sim_dir, folder, free_port())
    with pytest.raises(ConfigError) as e:
        check_stage(cfg, "generate", provided_backends={"gen", "resp"})
    msg = str(e.value)
    assert "generate.rejected_backend" in msg and "no vLLM virtualenv found" in msg
    assert "scripts/setup_llm_server.sh" in msg and "rejected_backend=in_process" in msg


def test_the_pipeline_names_a_missing_vllm_venv_before_its_first_step(tmp_path, monkeypatch):
    """paper_matrix_tuned's rejected answers need the server's venv at its fourth step: the
    pipeline says so before the first one, although train_sft's folder does not exist yet."""
    from hydra import compose, initialize_config_dir

    from matrix.core.pipeline import run_pipeline
    from tests.doubles import CONF

    _no_vllm_venv(tmp_path, monkeypatch)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "pipeline",
            overrides=[
                "experiment=paper_matrix_tuned_tiny",
                "rejected_backend=vllm",
                "logger=none",
                f"paths.runs_dir={tmp_path / 'runs'}",
            ],
        )
    with pytest.raises(ConfigError, match="no vLLM virtualenv found") as e:
        run_pipeline(cfg)
    assert "generate.rejected_backend" in str(e.value) and "[roles: rejecter]" in str(e.value)
    assert not (tmp_path / "runs" / "paper_matrix_tuned_tiny" / "simulate").exists()


def test_a_user_server_for_the_folder_is_reused_and_left_running(
    tmp_path, sim_dir, folder, monkeypatch
):
    """base_url: a server the user started for the folder (any served name) is used as it is
    and not stopped; one serving another folder is refused, naming what it serves."""
    from matrix.llm.server import LocalServer

    monkeypatch.setenv("MATRIX_VLLM_PYTHON", str(fake_vllm_python(tmp_path)))
    port = free_port()
    with LocalServer(port, folder, "sft", log_path=tmp_path / "user.log") as user:
        url = user.base_url
        cfg = _cfg(
            tmp_path, sim_dir, folder, free_port(), f"generate.rejected_backend.base_url={url}"
        )
        run_generate(cfg, backends=scripted_backends())
        assert _answers(port)  # still running: the user's
        manifest = json.loads((tmp_path / "runs/default/generate/manifest.json").read_text())
        assert manifest["rejected_model"]["served_name"] == "sft"
        assert manifest["rejected_model"]["server"] == "reused"
        other = tmp_path / "other"
        other.mkdir()
        (other / "config.json").write_text("{}")
        (other / "model.safetensors").write_bytes(b"\0")
        cfg = _cfg(
            tmp_path / "b", sim_dir, other, free_port(), f"generate.rejected_backend.base_url={url}"
        )
        with pytest.raises(ConfigError, match=re.escape(f"serves sft ({folder}), not {other}")):
            run_generate(cfg, backends=scripted_backends())


def test_the_presets_choose_the_backend(tmp_path):
    """paper_matrix_tuned serves the SFT folder with vLLM in its generate step; its CPU
    variant runs it in process; a typo in the block is named with its fix."""
    from hydra import compose, initialize_config_dir

    from matrix.core.config_check import key_problems
    from matrix.core.pipeline import pipeline_steps
    from tests.doubles import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        full = compose("pipeline", overrides=["experiment=paper_matrix_tuned"])
        tiny = compose("pipeline", overrides=["experiment=paper_matrix_tuned_tiny"])
        typo = compose(
            "pipeline", overrides=["rejected_backend=vllm", "+generate.rejected_backend.prot=1"]
        )
    for cfg, target in (
        (full, "matrix.llm.served_folder.ServedFolder"),
        (tiny, "matrix.llm.hf.HFBackend"),
    ):
        step = next(s for s in pipeline_steps(cfg) if s.name == "generate")
        assert step.cfg.generate.rejected_model.endswith("/train_sft/hf_model")
        assert step.cfg.generate.rejected_backend._target_ == target
        assert not key_problems(step.cfg)
    problems = dict(key_problems(typo).items)
    assert (
        "did you mean `generate.rejected_backend.port`?"
        in problems["generate.rejected_backend.prot"]
    )


def test_where_the_server_runs_is_not_part_of_the_config_hash(tmp_path):
    """A rerun on another port, GPU count or against a server the user started continues the
    same run (same hash, so it resumes); serving instead of in process, or in another dtype,
    is another run."""
    from hydra import compose, initialize_config_dir

    from matrix.core.provenance import config_hash
    from tests.doubles import CONF

    base = ["generate.rejected_model=/models/sft", "rejected_backend=vllm"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        served, moved, in_process, half = (
            compose("generate", overrides=[*base, *extra])
            for extra in (
                [],
                [
                    "generate.rejected_backend.port=9001",
                    "generate.rejected_backend.base_url=x",
                    "generate.rejected_backend.tensor_parallel_size=2",
                ],
                ["rejected_backend=in_process"],
                ["generate.rejected_backend.dtype=float16"],
            )
        )
    for resumable in (False, True):
        assert config_hash(moved, "generate", resumable=resumable) == config_hash(
            served, "generate", resumable=resumable
        )
    assert config_hash(in_process, "generate") != config_hash(served, "generate")
    assert config_hash(half, "generate") != config_hash(served, "generate")
