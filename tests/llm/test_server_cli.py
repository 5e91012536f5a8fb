"""The server command line and the diagnosis a stage prints when the server fails (no server
needed: the log is the tail of a real vLLM CPU engine death, kept in tests/llm/data/)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.llm.errors import EndpointUnreachable
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Sampling
from matrix.llm.server import parser, spec_from_args
from matrix.llm.server_record import diagnose, exit_reason, hint_for, last_error, server_record
from matrix.llm.server_spec import ServeSpec
from tests.conftest import free_port
from tests.doubles import chats_of

CRASH_LOG = Path(__file__).parent / "data" / "vllm_cpu_seed_crash.log"


def test_root_cause_is_found_under_the_errors_that_relay_it():
    text = CRASH_LOG.read_text()
    # The log ends with EngineDeadError and "Worker failed with error ..."; the cause is above.
    assert "EngineDeadError" in text and "Worker failed with error" in text
    err = last_error(text)
    assert err == "RuntimeError: CPU Generator does not use offset"
    assert "--no-enable-chunked-prefill" in hint_for(err)
    assert last_error("INFO all good\nINFO: 127.0.0.1 - GET /v1/models 200 OK") is None
    # vLLM warns at every start with an error's text quoted in it; that is not a cause
    ulimit_warning = (
        "(APIServer pid=3859) WARNING 11-26 18:13:54 [system_utils.py:255] Found ulimit of 20000 "
        "and failed to automatically increase with error current limit exceeds maximum limit. "
        "This can cause fd limit errors like `OSError: [Errno 24] Too many open files`. "
        "Consider increasing with ulimit -n"
    )
    assert last_error(ulimit_warning) is None
    assert (
        last_error(f"{ulimit_warning}\n{text}") == "RuntimeError: CPU Generator does not use offset"
    )


def test_exit_reason_names_the_signal():
    assert exit_reason(1) == "exited with code 1"
    assert exit_reason(-9).startswith("was killed by SIGKILL")
    assert exit_reason(-15) == "was killed by SIGTERM"


def test_cpu_build_never_prefills_a_prompt_in_chunks():
    spec = ServeSpec(port=8123, model_dir="/m/llama", served_name="llama", max_model_len=4096)
    cpu = spec.args("cpu")
    assert "--no-enable-chunked-prefill" in cpu
    # A whole context fits one step's token budget, so no prompt is ever split.
    assert int(cpu[cpu.index("--max-num-batched-tokens") + 1]) >= 4096
    assert cpu[cpu.index("--dtype") + 1] == "float32" and "--enforce-eager" in cpu
    cuda = spec.args("cuda")  # CUDA generators rewind fine: vLLM's defaults stay
    assert "--no-enable-chunked-prefill" not in cuda and "--enforce-eager" not in cuda
    assert cuda[cuda.index("--dtype") + 1] == "bfloat16"
    tp = ServeSpec(tensor_parallel_size=2, data_parallel_size=4).args("cuda")
    assert tp[tp.index("--tensor-parallel-size") + 1] == "2"
    assert tp[tp.index("--data-parallel-size") + 1] == "4"


def test_the_printed_restart_command_serves_the_same_spec():
    spec = ServeSpec(
        port=8123,
        model_dir="/models/Meta Llama 3",
        served_name="llama3",
        max_model_len=8192,
        tensor_parallel_size=2,
        data_parallel_size=2,
        dtype="bfloat16",
        eager=False,
        extra_args=("--gpu-memory-utilization", "0.85"),
    )
    argv = shlex.split(spec.command())
    assert argv[1:3] == ["-m", "matrix.llm.server"]
    assert spec_from_args(parser().parse_args(argv[3:])) == spec
    assert "llm.backends.server.base_url=http://127.0.0.1:8123/v1" in spec.llm_override()
    assert "'llm.backends.server.tokenizer=/models/Meta Llama 3'" in spec.llm_override()
    # A folder alone is served under the folder's name.
    assert spec_from_args(parser().parse_args(["--model-dir", "/m/qwen2.5-7b"])).served_name == (
        "qwen2.5-7b"
    )


@pytest.fixture
def dead_server_record(tmp_path, monkeypatch) -> str:
    """The record `LocalServer.start` writes, for a server whose process has exited and whose
    log ends in the real engine death."""
    monkeypatch.setenv("MATRIX_CACHE", str(tmp_path / "cache"))
    port = free_port()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    pid = int(proc.stdout)  # a process that has certainly exited
    log = tmp_path / "server.log"
    log.write_text("INFO an earlier run\nValueError: not this one\n" + CRASH_LOG.read_text())
    spec = ServeSpec(port=port)
    rec = tmp_path / "cache" / "servers" / f"127.0.0.1-{port}.json"
    rec.parent.mkdir(parents=True)
    offset = len("INFO an earlier run\nValueError: not this one\n")
    rec.write_text(
        json.dumps({"pid": pid, "log": str(log), "log_offset": offset, "restart": spec.command()})
    )
    return f"http://127.0.0.1:{port}/v1"


def test_diagnosis_names_the_death_its_cause_the_fix_and_the_restart(dead_server_record):
    url = dead_server_record
    assert server_record(url)["pid"] > 0
    text = diagnose(url)
    assert "has exited" in text
    assert "RuntimeError: CPU Generator does not use offset" in text
    assert "not this one" not in text  # only this run of the server's log
    assert "Fix: " in text and "--no-enable-chunked-prefill" in text
    assert "Restart it with: " in text and "-m matrix.llm.server --port" in text
    assert diagnose("https://api.openai.com/v1") == ""


def test_a_stage_facing_the_dead_server_is_told_why_and_how_to_restart(dead_server_record):
    backend = OpenAIBackend("smollm2", base_url=dead_server_record, api_key_env=None, max_retries=1)
    with pytest.raises(EndpointUnreachable) as e:
        backend.generate(chats_of("hi"), Sampling(max_new_tokens=4))
    msg = str(e.value)
    assert dead_server_record in msg and "CPU Generator does not use offset" in msg
    assert "Restart it with: " in msg


def test_no_record_means_the_generic_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("MATRIX_CACHE", str(tmp_path))
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend("smollm2", base_url=url, api_key_env=None, max_retries=0)
    with pytest.raises(EndpointUnreachable, match="make llm-server MODEL="):
        backend.generate(chats_of("hi"), Sampling(max_new_tokens=4))


def test_a_server_that_fails_then_goes_silent_is_reported_as_died(monkeypatch, tmp_path):
    import threading
    import time

    from matrix.llm.errors import ServerDied
    from tests.llm.fault_proxy import Fault, FaultProxy

    monkeypatch.setenv("MATRIX_CACHE", str(tmp_path))
    proxy = FaultProxy(f"http://127.0.0.1:{free_port()}").__enter__()
    proxy.faults.append(Fault(status=500))
    url = proxy.base_url

    def go_silent() -> None:  # after its one HTTP 500, the server is gone
        while proxy.posts < 1:
            time.sleep(0.01)
        proxy.__exit__()

    t = threading.Thread(target=go_silent)
    t.start()
    backend = OpenAIBackend(
        "smollm2", base_url=url, api_key_env=None, max_retries=3, retry_max_wait=0.5,
        check_model=False,
    )  # fmt: skip
    with pytest.raises(ServerDied) as e:
        backend.generate(chats_of("hi"), Sampling(max_new_tokens=4))
    t.join()
    msg = str(e.value)
    assert "died: it answered HTTP 500: injected fault, then stopped answering" in msg
    assert url in msg
