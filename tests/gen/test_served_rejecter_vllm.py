"""The served rejecter on real vLLM (marked `server`: the vLLM CPU build in .venv-vllm, a
minute or more to start): generate's DPO rejected answers come from a trained model folder
(the embedded SmolLM2 saved as a Hugging Face folder) that the stage serves with
`rejected_backend=vllm`, starting the project's server on it and stopping it at the end. The
lifecycle's failure paths are in test_served_rejecter.py, on a stand-in process."""

from __future__ import annotations

import json

import httpx
import pytest

from matrix.gen.run import run_generate
from matrix.llm.embedded import smollm2_hf_dir
from tests.conftest import free_port
from tests.doubles import SCRIPTED_ROLES, compose_generate, read_rows, scripted_backends

pytestmark = pytest.mark.server


def test_rejected_answers_come_from_the_folder_served_by_vllm(tmp_path, sim_dir):
    folder = smollm2_hf_dir()
    port = free_port()
    log = tmp_path / "vllm.log"
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=dpo_complex",
        "generator.sets.complex.target=2",
        "generate.batch_size=2",
        f"generate.rejected_model={folder}",
        "rejected_backend=vllm",
        f"generate.rejected_backend.port={port}",
        f"generate.rejected_backend.log_path={log}",
        "generate.rejected_backend.max_model_len=2048",
        "generate.filters.language=null",
        "generate.filters.min_response_chars=1",
        "generate.filters.drop_truncated=false",
        "llm.roles.rejecter.max_new_tokens=24",
        "llm.cache.enabled=false",
        *SCRIPTED_ROLES[:2],
    )
    result = run_generate(cfg, backends=scripted_backends())
    with pytest.raises(httpx.HTTPError):  # the stage stopped its server
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    out = tmp_path / "runs" / "default" / "generate"
    rows = read_rows(out / "dpo.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert r["rejected"].strip() and r["rejected"] != r["chosen"]
        assert r["lineage"]["models"]["rejecter"] == str(folder)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejected_model"]["backend"] == "vllm"
    assert manifest["rejected_model"]["served_name"] == str(folder)
    assert manifest["rejected_model"]["server"] == "started by the stage"
    rejecter = result["llm"]["roles"]["rejecter"]
    assert rejecter["calls"] >= 2 and rejecter["completion_tokens"] > 0
    # every rejected answer was a request to that server (vLLM's access log)
    assert log.read_text().count("POST /v1/chat/completions") == rejecter["calls"]
