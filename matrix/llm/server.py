"""A local OpenAI-compatible server for the embedded model (vLLM's CPU or GPU build).

vLLM pins its own torch and transformers, so it lives in its own virtualenv (made by
`scripts/setup_llm_server.sh`, default `.venv-vllm` beside the project's venv) and runs as a
separate process; this module starts it, waits until `/v1/models` answers, and stops it by
its process group. The `smollm2_server` llm preset points the openai backend at it.

    python -m matrix.llm.server --port 8000        # serves embedded SmolLM2 as "smollm2"
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from matrix.llm.embedded import smollm2_hf_dir
from matrix.llm.errors import LLMError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> Path:
    """The interpreter of the vLLM virtualenv: $MATRIX_VLLM_PYTHON, else `.venv-vllm` in the
    project or beside the running venv."""
    env = os.environ.get("MATRIX_VLLM_PYTHON")
    candidates = [Path(env)] if env else []
    candidates += [
        REPO / ".venv-vllm/bin/python",
        Path(sys.prefix).parent / ".venv-vllm/bin/python",
    ]
    for c in candidates:
        if c.exists():
            return c
    raise LLMError(
        "no vLLM virtualenv found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "); run `scripts/setup_llm_server.sh` or set MATRIX_VLLM_PYTHON"
    )


class LocalServer:
    """One vLLM OpenAI-compatible server process on 127.0.0.1."""

    def __init__(
        self,
        port: int,
        model_dir: str | Path | None = None,
        served_name: str = "smollm2",
        max_model_len: int = 2048,
        log_path: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.port = port
        self.model_dir = Path(model_dir) if model_dir else None
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/matrix-vllm-{port}.log")
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        model_dir = self.model_dir or smollm2_hf_dir()
        cmd = [
            str(vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", "bfloat16",
            *self.extra_args,
        ]  # fmt: skip
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        }
        env.pop("PYTHONPATH", None)  # the server venv must not import this project's packages
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        # A new session: vLLM forks engine processes; stopping the group stops them all.
        self.proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        logf.close()
        log.info("started vLLM (pid %d) on %s, log %s", self.proc.pid, self.base_url, self.log_path)
        return self

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Block until the server lists its models; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise LLMError(
                    f"vLLM exited with code {self.proc.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise LLMError(f"vLLM not ready after {timeout}s; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """Crash it (SIGKILL, no cleanup), as a power cut or OOM would."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        # Engine children can outlive the parent briefly; make sure the group is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def __enter__(self) -> LocalServer:
        self.start().wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model-dir", default=None, help="HF folder (default: embedded SmolLM2)")
    ap.add_argument("--served-name", default="smollm2")
    ap.add_argument("--max-model-len", type=int, default=2048)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = LocalServer(args.port, args.model_dir, args.served_name, args.max_model_len)
    server.start()
    try:
        waited = server.wait_ready()
        log.info(
            "ready after %.0fs at %s (model %s); Ctrl-C stops it",
            waited,
            server.base_url,
            args.served_name,
        )
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
