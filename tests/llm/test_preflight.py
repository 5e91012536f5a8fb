"""The paper presets run the paper's models (Llama-3-8B-Instruct served, GPT-4-Turbo judge),
and a missing server, served name, model folder or key fails before any work, naming the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hydra import compose, initialize_config_dir

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_config
from matrix.core.registry import STAGES
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.roles import Roles
from tests.conftest import CONF, ROOT
from tests.llm.conftest import free_port

PAPER = ["paper_sft", "paper_dpo", "paper_sft_10k", "paper_matrix_tuned", "comm_ablation"]
WRITERS = ["agent", "modulator", "summarizer", "generator", "responder", "rejecter"]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("pipeline", overrides=list(overrides))


@pytest.mark.parametrize("preset", PAPER)
def test_paper_preset_runs_llama3_instruct_served_and_a_gpt4_judge(preset, tmp_path) -> None:
    cfg = _compose(f"experiment={preset}", f"llm.cache.dir={tmp_path}")
    roles = Roles(cfg.llm)  # builds the backends; nothing is called
    for role in WRITERS:
        b = roles.get(role).backend
        assert isinstance(b, OpenAIBackend), role
        assert b.model == "llama3-8b-instruct" and b.api_key_env is None
        assert b.base_url == "http://127.0.0.1:8000/v1"
    judge = roles.get("judge").backend
    assert isinstance(judge, OpenAIBackend)
    assert judge.model == "gpt-4-1106-preview" and judge.api_key_env == "OPENAI_API_KEY"
    assert judge.base_url == "https://api.openai.com/v1"
    assert roles.get("judge").prices.completion > 0  # the ledger costs the judge


@pytest.mark.parametrize(
    "preset", [f"{p}_tiny" for p in PAPER if p not in ("paper_sft", "paper_dpo")]
)
def test_tiny_variant_keeps_the_embedded_model_in_every_role(preset) -> None:
    cfg = _compose(f"experiment={preset}")
    assert {str(r.backend) for r in cfg.llm.roles.values()} == {"smollm2"}
    assert cfg.llm.backends.smollm2.model == "embedded:smollm2-135m-instruct"


def test_pipeline_without_server_or_key_fails_before_any_work(tmp_path) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "matrix.pipeline",
            "experiment=paper_matrix_tuned",
            f"paths.runs_dir={tmp_path}",
            f"llm.backends.llama3_8b_instruct.base_url={url}",
            "llm.preflight.timeout=2",
            "logger=none",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr
    assert f"no server at {url}" in err
    assert (
        f"`make llm-server MODEL=<HF folder of the model> SERVED_NAME=llama3-8b-instruct PORT={port}`"
        in err
    )
    # no step calls the rejecter: generate_sft makes SFT rows only, and generate's rejected
    # answers come from train_sft's model folder (generate.rejected_model)
    assert "[roles: agent, summarizer, modulator, generator, responder]" in err
    assert "OPENAI_API_KEY is not set: export it" in err and "[roles: judge]" in err
    assert "huggingface-cli download meta-llama/Meta-Llama-3-8B" in err  # train_sft's model
    # no stage started: no stage folder, no manifest
    run = tmp_path / "paper_matrix_tuned"
    assert not any((run / s).exists() for s in ("simulate", "generate", "train_sft", "train"))


class _Models(BaseHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path != "/v1/models" or not self.served:
            self.send_error(404 if self.path != "/v1/models" else 500)
            return
        body = json.dumps({"object": "list", "data": [{"id": m} for m in self.served]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def models_endpoint() -> Iterator[tuple[str, type[_Models]]]:
    """The model-list route of an OpenAI-compatible server (all that preflight asks for)."""
    handler = type("Handler", (_Models,), {"served": ["smollm2"]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_serving_another_model_is_named(models_endpoint) -> None:
    url, handler = models_endpoint
    cfg = _compose("experiment=paper_sft_10k", f"llm.backends.llama3_8b_instruct.base_url={url}")
    with pytest.raises(ConfigError) as e:
        check_config(cfg, "simulate")
    assert f"the server at {url} serves smollm2, not 'llama3-8b-instruct'" in str(e.value)
    assert "SERVED_NAME=llama3-8b-instruct" in str(e.value)
    handler.served = ["llama3-8b-instruct"]
    check_config(cfg, "simulate")  # served, and simulate does not need the judge's key
    check_config(cfg, "generate")
    handler.served = []  # a server that answers, but with errors
    with pytest.raises(ConfigError) as e:
        check_config(cfg, "simulate")
    assert f"the server at {url} does not list its models (HTTP 500 on GET /models)" in str(e.value)


def test_each_stage_checks_only_the_models_it_calls(models_endpoint, monkeypatch) -> None:
    url, handler = models_endpoint
    handler.served = ["llama3-8b-instruct"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = _compose("experiment=paper_sft_10k", f"llm.backends.llama3_8b_instruct.base_url={url}")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        check_config(cfg, "evaluate")  # AlpacaEval 2 and Arena-Hard need the judge
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    check_config(cfg, "evaluate")
    off = _compose("experiment=paper_sft_10k", "llm.preflight.enabled=false")
    check_config(off, "simulate")  # turned off: nothing is probed


def test_each_stage_declares_the_roles_its_config_calls() -> None:
    """One place per stage says which roles it calls (its registry record's roles_ref): its
    validator and the model check read it, so a role it does not call needs no server."""
    roles = {name: s.llm_roles(_compose()) for name, s in STAGES.items()}
    assert roles["simulate"] == ["agent", "summarizer", "modulator"]
    assert roles["train"] == []
    assert "judge" in roles["evaluate"]
    assert STAGES["simulate"].llm_roles(_compose("communication=none")) == ["agent", "summarizer"]
    assert STAGES["evaluate"].llm_roles(_compose("eval.compare=[a,b]")) == []
    tuned = ("experiment=paper_matrix_tuned",)
    generate = STAGES["generate"]
    assert generate.llm_roles(_compose(*tuned)) == ["generator", "responder", "rejecter"]
    sft_only = _compose(*tuned, "generate.run_sets=[general]")
    assert generate.llm_roles(sft_only) == ["generator", "responder"]
    from_folder = _compose(*tuned, "generate.rejected_model=/models/sft")
    assert generate.llm_roles(from_folder) == ["generator", "responder"]


def test_a_missing_local_model_folder_is_named(tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    cfg = _compose(f"llm.backends.smollm2.model={missing}")
    with pytest.raises(ConfigError, match=f"model folder {missing} does not exist"):
        check_config(cfg, "simulate")
    check_config(_compose(), "simulate")  # the embedded model is always there


def test_the_pipeline_checks_only_the_steps_it_will_run(tmp_path, monkeypatch) -> None:
    from matrix.core.provenance import config_hash
    from matrix.core.stage import stage_dir
    from matrix.pipeline import run_pipeline

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://127.0.0.1:{free_port()}/v1"  # no server
    cfg = _compose(
        "experiment=paper_sft_10k",
        "pipeline.stages=[simulate]",
        f"paths.runs_dir={tmp_path}",
        f"llm.backends.llama3_8b_instruct.base_url={url}",
        "logger=none",
    )
    with pytest.raises(ConfigError, match=f"no server at {url}") as e:
        run_pipeline(cfg)
    assert "OPENAI_API_KEY" not in str(e.value)  # evaluate is not among the steps
    assert not stage_dir(cfg, "simulate").exists()
    # a finished simulate step is reused, so its server is not needed
    done = stage_dir(cfg, "simulate")
    done.mkdir(parents=True)
    manifest = {"complete": True, "config_hash": config_hash(cfg, "simulate"), "counts": {}}
    (done / "manifest.json").write_text(json.dumps(manifest))
    assert run_pipeline(cfg) == {"simulate": {}}


def test_the_suggested_make_command_passes_its_variables_to_the_server():
    """The command the preflight prints (`make llm-server MODEL=... SERVED_NAME=... PORT=...`)
    must reach `matrix.llm.server` with those values; `make -n` prints without running."""
    out = subprocess.run(
        [
            "make",
            "-n",
            "llm-server",
            "MODEL=/models/m",
            "SERVED_NAME=llama3-8b-instruct",
            "PORT=8123",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    joined = out.stdout.replace("\\\n", " ")  # the recipe's line continuations
    line = next(x for x in joined.splitlines() if "matrix.llm.server" in x)
    assert "--port 8123" in line
    assert "--model-dir /models/m" in line
    assert "--served-name llama3-8b-instruct" in line
