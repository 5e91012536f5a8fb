"""A trained model folder served by the project's vLLM server for as long as a stage uses it.

`ServedFolder` is an OpenAI-compatible backend (`OpenAIBackend`) whose server is the folder
itself: on its first call it starts `matrix.llm.server.LocalServer` on the folder (or uses the
server at `base_url` that the user started for it), waits until the server answers, sends
every call there, and `close()` stops the server it started (the generate stage closes its
roles in a `finally`, so a failing step stops it too). It is what `generate.rejected_backend`
names on GPU presets (conf/rejected_backend/vllm.yaml): paper_matrix_tuned's 10K rejected
answers come from the SFT model through vLLM, not through transformers in process.

Its `name` is the folder, exactly as the in-process backend (`matrix.llm.hf.HFBackend`) names
it: rows record the same lineage whichever backend wrote them, and the call cache keys the
folder's weights (`matrix.llm.cache.model_identity`), so a retrained folder is never answered
from old entries. The name the server serves it under is `served_name` (`served()` reports it
for the manifest).

A server that dies mid-step fails the step at once (no retries against a dead process) with
its log's last error; rerunning the same command resumes the stage where it stopped and starts
the server again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from tenacity import stop_any

from matrix.llm.errors import LLMError, ServerDied
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.server import LocalServer, vllm_python
from matrix.llm.server_record import (
    exit_reason,
    last_error,
    log_since,
    record_path,
    server_record,
)

log = logging.getLogger(__name__)

_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


def folder_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a model folder a server can load (config.json and weights), or None."""
    d = Path(folder)
    if not (d / "config.json").is_file():
        return f"no Hugging Face model folder at {d} (expected config.json)"
    if not any(next(d.glob(p), None) for p in _WEIGHTS):
        return (
            f"{d} has config.json but no weights (*.safetensors, *.bin): the training that "
            "exports it did not finish"
        )
    return None


def served_ids(base_url: str, folder: str | Path, timeout: float = 5.0) -> tuple[list[str], str]:
    """The names under which the server at `base_url` serves `folder` (vLLM lists each model's
    path as `root`), and what it serves in all, for messages. Raises httpx.HTTPError if no
    server answers."""
    r = httpx.get(f"{base_url.rstrip('/')}/models", timeout=timeout)
    r.raise_for_status()
    models = r.json().get("data", [])
    want = Path(folder).resolve()
    ids = [str(m["id"]) for m in models if m.get("root") and Path(m["root"]).resolve() == want]
    listed = ", ".join(f"{m.get('id')} ({m.get('root')})" for m in models) or "nothing"
    return ids, listed


def stop_group(pid: int, grace: float = 20.0) -> None:
    """Stop the process group `pid` leads (a vLLM server and its engine processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            os.killpg(pid, 0)  # ProcessLookupError once the group is gone
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)


class ServedFolder(OpenAIBackend):
    """`model`: the HF folder (the generate stage fills it from `generate.rejected_model`).
    `base_url`: a server the user already runs for this folder (`make llm-server
    MODEL=<folder>`); null starts one on 127.0.0.1:`port` and stops it at `close()`. The
    serving options (`tensor_parallel_size`, `data_parallel_size`, `max_model_len`, `dtype`,
    `extra_args`: vLLM flags such as `--gpu-memory-utilization 0.4` when another server shares
    the GPUs) are `python -m matrix.llm.server`'s; the client options are `OpenAIBackend`'s."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        port: int = 8011,
        served_name: str | None = None,
        max_model_len: int = 4096,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        ready_timeout: float = 1800.0,
        log_path: str | None = None,
        max_concurrency: int = 64,
        timeout: float = 300.0,
        max_retries: int = 6,
        retry_max_wait: float = 30.0,
        overflow: str = "error",
    ):
        self.folder = str(model)
        self.reused = base_url is not None
        self.origin = "reused" if self.reused else "started by the stage"
        self.ready_timeout = float(ready_timeout)
        self.server = LocalServer(
            port,
            self.folder,
            served_name or self.folder,
            max_model_len,
            log_path,
            tuple(extra_args),
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            dtype=dtype,
        )
        super().__init__(
            model=served_name or self.folder,
            base_url=base_url or self.server.base_url,
            api_key_env=None,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            retry_max_wait=retry_max_wait,
            overflow=overflow,
            tokenizer=self.folder,  # its chat template, for Magpie-style sampling
        )
        self._ready = False
        self._orphan: int | None = None  # pid of a server a killed run left for this folder

    @property
    def name(self) -> str:
        return self.folder

    def served(self) -> dict[str, Any]:
        """What the manifest records: the folder, the served name and where it was served."""
        return {
            "folder": self.folder,
            "backend": "vllm",
            "served_name": self.model,
            "base_url": self.base_url,
            "server": self.origin,
        }

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> ServedFolder:
        """Start the server (or check the user's) and wait until it answers; idempotent."""
        if self._ready:
            return self
        problem = folder_problem(self.folder)
        if problem:
            raise LLMError(f"{problem}; point generate.rejected_model at train.py's hf_model/")
        if self.reused:
            self._check_reused()
        elif not self._adopt_running():
            vllm_python()  # no venv: an LLMError naming scripts/setup_llm_server.sh
            log.info("serving %s with vLLM at %s", self.folder, self.base_url)
            self.server.start()
            try:
                waited = self.server.wait_ready(self.ready_timeout)
            except BaseException as e:
                self.server.stop(forget=False)
                if isinstance(e, LLMError):
                    raise LLMError(
                        f"the vLLM server for {self.folder} (generate.rejected_backend) did not "
                        f"start: {e}\nFix what its log says and rerun (the stage resumes), or "
                        "run the folder in process: rejected_backend=in_process"
                    ) from e
                raise
            log.info("vLLM serves %s after %.0fs", self.folder, waited)
        self._ready = True
        return self

    def _check_reused(self) -> None:
        try:
            ids, listed = served_ids(self.base_url, self.folder)
        except httpx.HTTPError as e:
            raise LLMError(
                f"no server answers at {self.base_url} (generate.rejected_backend.base_url: "
                f"{type(e).__name__}); start it with `make llm-server MODEL={self.folder}`, or "
                "set base_url=null to let the stage start one"
            ) from e
        if not ids:
            raise LLMError(
                f"the server at {self.base_url} does not serve {self.folder} (it serves "
                f"{listed}); start one for the folder (`make llm-server MODEL={self.folder} "
                "PORT=...`) and point generate.rejected_backend.base_url at it"
            )
        if self.model not in ids:  # served under the user's name
            self.model = ids[0]

    def _adopt_running(self) -> bool:
        """A server already on the port: use it if it serves this folder, fail if it serves
        something else. One that a killed run of this stage started (its record names the
        folder as the served model) is stopped at `close()` like one started now."""
        try:
            ids, listed = served_ids(self.base_url, self.folder, timeout=2.0)
        except httpx.HTTPError:
            return False
        if not ids:
            raise LLMError(
                f"port {self.server.port} is taken by a server serving {listed}; set "
                "generate.rejected_backend.port to a free port, or base_url to use a server "
                f"that serves {self.folder}"
            )
        rec = server_record(self.base_url) or {}
        if rec.get("model") == self.model and self.model in ids:
            self._orphan, self.origin = int(rec["pid"]), "left running by a killed run of the stage"
            log.warning(
                "using the server a killed run left for %s (pid %d)", self.folder, self._orphan
            )
        else:
            log.warning(
                "using the server at %s that serves %s; it stays running",
                self.base_url,
                self.folder,
            )
            self.model, self.reused, self.origin = ids[0], True, "reused"
        return True

    def close(self) -> None:
        """Stop the server this backend started (never a reused one); safe to call twice."""
        if self.server.proc is not None:
            log.info("stopping the vLLM server of %s", self.folder)
            self.server.stop()
        if self._orphan is not None:
            stop_group(self._orphan)
            record_path(self.server.port).unlink(missing_ok=True)
            self._orphan = None
        self._ready = False

    def __enter__(self) -> ServedFolder:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------
    def _died(self) -> bool:
        proc = self.server.proc
        return proc is not None and proc.poll() is not None

    def _retrying(self):
        retrying = super()._retrying()
        # no retries against a process that has exited
        retrying.stop = stop_any(retrying.stop, lambda _state: self._died())
        return retrying

    def _batch(self, items, sampling, on_result):
        if not items:
            return []
        self.open()
        try:
            return super()._batch(items, sampling, on_result)
        except LLMError as e:
            if not self._died():
                raise
            raise self._death(e) from e

    def _death(self, e: LLMError) -> ServerDied:
        proc, srv = self.server.proc, self.server
        err = last_error(log_since(srv.log_path, srv.log_offset))
        return ServerDied(
            f"the vLLM server serving {self.folder} (generate.rejected_backend) "
            f"{exit_reason(proc.returncode if proc else None)} mid-step"
            + (f"; its log's last error: {err}" if err else "")
            + f" (log {srv.log_path}). Rerun the same command: the stage resumes where it "
            f"stopped and starts the server again. [{type(e).__name__}]"
        )


def serving_problems(node: dict[str, Any], folder: str) -> list[str]:
    """What stops a `ServedFolder` block from serving `folder`, before any work: no vLLM
    virtualenv (when the stage starts the server), or no server for the folder at `base_url`
    (unless the folder is not there yet: an earlier pipeline step writes it)."""
    if node.get("base_url") is None:
        try:
            vllm_python()
        except LLMError as e:
            return [f"{e}; or run the folder in process: rejected_backend=in_process"]
        return []
    if not Path(folder).is_dir():
        return []  # an earlier pipeline step writes it; the stage checks the server at its start
    try:
        ids, listed = served_ids(str(node["base_url"]), folder)
    except httpx.HTTPError as e:
        return [
            f"no server answers at {node['base_url']} ({type(e).__name__}): start it with "
            f"`make llm-server MODEL={folder}`, or set base_url=null to let the stage start one"
        ]
    if not ids:
        return [f"the server at {node['base_url']} serves {listed}, not {folder}"]
    return []
