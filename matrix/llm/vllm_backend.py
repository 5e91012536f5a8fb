"""vLLM's offline engine in this process: the fast path on GPU nodes.

Tensor parallel splits one model over `tensor_parallel_size` GPUs; data parallel runs
`data_parallel_size` engines, each in its own process on its own slice of the visible GPUs,
and splits every batch between them (vLLM's offline engine is single-process per replica).
Prefix caching is on by default: agents and judges repeat long system prompts. A role that
sets `json_schema` gets guided decoding (the answer is valid JSON by construction).

vLLM is imported only when the engine is first built, so CPU installs never need it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Sequence
from typing import Any

from matrix.llm.embedded import resolve_model_path
from matrix.llm.errors import ContextOverflow, LLMError
from matrix.llm.protocol import Chat, Completion, Sampling, truncate_at_stop

log = logging.getLogger(__name__)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise LLMError(
            "the in-process vllm backend needs vLLM in this environment, and vLLM pins its own "
            "torch, so the training environment does not carry it. Serve the model from its "
            "own virtualenv instead (`make llm-server MODEL=path/to/hf_folder`, then the "
            "`llm=` overrides it prints), or run in an environment made with `pip install "
            f"vllm` first; import failed with: {e}"
        ) from e
    return vllm


def _structured_kwargs(vllm: Any, schema: dict | bool | None) -> dict[str, Any]:
    """SamplingParams kwargs for guided JSON, across vLLM's two APIs for it."""
    if schema is None or schema is False:
        return {}
    spec = {"json_object": True} if schema is True else {"json": schema}
    params = vllm.sampling_params
    if hasattr(params, "StructuredOutputsParams"):  # vLLM >= 0.11
        return {"structured_outputs": params.StructuredOutputsParams(**spec)}
    return {"guided_decoding": params.GuidedDecodingParams(**spec)}


class VLLMBackend:
    """Batched generation on vLLM's offline engine; `model` is a hub id, a folder or
    `embedded:smollm2-135m-instruct`."""

    constrains_json = True  # Sampling.json_schema -> guided decoding (matrix.llm.protocol)

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        overflow: str = "error",  # "error" | "truncate_left"
        engine_kwargs: dict | None = None,
    ):
        if overflow not in ("error", "truncate_left"):
            raise ValueError(f"llm backend overflow={overflow!r}: use 'error' or 'truncate_left'")
        self.model_spec = model
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.data_parallel_size = int(data_parallel_size)
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enable_prefix_caching = enable_prefix_caching
        self.overflow = overflow
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine: Any = None
        self._replicas: list[_Replica] = []

    @property
    def name(self) -> str:
        return self.model_spec

    def _settings(self) -> dict[str, Any]:
        return {
            "model": self.model_spec,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "dtype": self.dtype,
            "enable_prefix_caching": self.enable_prefix_caching,
            "overflow": self.overflow,
            "engine_kwargs": self.engine_kwargs,
        }

    def engine(self) -> Any:
        if self._engine is None:
            vllm = _import_vllm()
            kwargs = {
                "model": resolve_model_path(self.model_spec),
                "tensor_parallel_size": self.tensor_parallel_size,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "dtype": self.dtype,
                "enable_prefix_caching": self.enable_prefix_caching,
                **self.engine_kwargs,
            }
            if self.max_model_len:
                kwargs["max_model_len"] = self.max_model_len
            from vllm.platforms import current_platform

            if current_platform.is_cpu():
                # The CPU build dies rewinding a seeded request's CPU generator when a prompt
                # is prefilled in chunks ("CPU Generator does not use offset"); unchunked,
                # vLLM sizes the step's token budget to a whole context.
                kwargs.setdefault("enable_chunked_prefill", False)
            log.info(
                "starting vLLM engine for %s (tp=%d)", kwargs["model"], self.tensor_parallel_size
            )
            self._engine = vllm.LLM(**kwargs)
        return self._engine

    def generate(self, chats: Sequence[Chat], sampling: Sampling) -> list[Completion]:
        if not chats:
            return []
        if self.data_parallel_size > 1:
            return self._generate_data_parallel(list(chats), sampling)
        return self._generate_local(list(chats), sampling)

    def _generate_local(self, chats: list[Chat], sampling: Sampling) -> list[Completion]:
        vllm = _import_vllm()
        engine = self.engine()
        tok = engine.get_tokenizer()
        limit = engine.llm_engine.model_config.max_model_len - sampling.max_new_tokens
        prompts = []
        for i, chat in enumerate(chats):
            text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            # The template already holds the special tokens (BOS); don't add them twice.
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                if self.overflow == "error":
                    raise ContextOverflow(
                        f"row {i}: prompt of {len(ids)} tokens + max_new_tokens "
                        f"{sampling.max_new_tokens} exceeds the context of {self.name} "
                        f"({limit + sampling.max_new_tokens}); shorten the prompt, lower "
                        "max_new_tokens, or set the backend's overflow=truncate_left",
                        row=i,
                    )
                ids = ids[len(ids) - limit :]
            prompts.append({"prompt_token_ids": ids})
        params = vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=max(0.0, sampling.temperature),
            top_p=1.0 if sampling.greedy else sampling.top_p,
            # A per-request seed makes a sampled row reproducible whatever batch it is in.
            seed=None if sampling.greedy else sampling.seed,
            stop=list(sampling.stop) or None,
            **_structured_kwargs(vllm, sampling.json_schema),
        )
        outputs = engine.generate(prompts, params, use_tqdm=False)
        result = []
        for p, o in zip(prompts, outputs, strict=True):
            c = o.outputs[0]
            text, _ = truncate_at_stop(c.text, sampling.stop)  # vLLM already stops; be exact
            result.append(
                Completion(
                    text=text.strip(),
                    prompt_tokens=len(p["prompt_token_ids"]),
                    completion_tokens=len(c.token_ids),
                    finish_reason=c.finish_reason or "stop",
                    model=self.name,
                )
            )
        return result

    def _generate_data_parallel(self, chats: list[Chat], sampling: Sampling) -> list[Completion]:
        if not self._replicas:
            gpus = _visible_gpus()
            need = self.data_parallel_size * self.tensor_parallel_size
            if gpus and len(gpus) < need:
                raise LLMError(
                    f"data_parallel_size={self.data_parallel_size} x tensor_parallel_size="
                    f"{self.tensor_parallel_size} needs {need} GPUs; {len(gpus)} visible"
                )
            tp = self.tensor_parallel_size
            self._replicas = [
                _Replica(self._settings(), gpus[r * tp : (r + 1) * tp] if gpus else [])
                for r in range(self.data_parallel_size)
            ]
        # Contiguous shards keep rows that share a prefix on the same replica's cache.
        n = len(self._replicas)
        bounds = [len(chats) * r // n for r in range(n + 1)]
        for r, rep in enumerate(self._replicas):
            rep.send(chats[bounds[r] : bounds[r + 1]], sampling)
        out: list[Completion] = []
        error: Exception | None = None
        for r, rep in enumerate(self._replicas):  # drain every replica, or a stale answer
            try:  # would be read as the next batch's
                out.extend(rep.receive())
            except ContextOverflow as e:
                error = error or e.at_row(bounds[r] + (e.row or 0))
            except Exception as e:
                error = error or e
        if error is not None:
            raise error
        return out

    def close(self) -> None:
        for rep in self._replicas:
            rep.close()
        self._replicas = []

    def __del__(self) -> None:
        self.close()


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def _replica_main(conn: Any, settings: dict[str, Any], gpus: list[str]) -> None:
    # Own process group: vLLM's engine processes are its children, and close() must be able
    # to stop them all even if the engine does not shut down cleanly.
    os.setsid()
    if gpus:  # before vLLM (and CUDA) is imported in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    backend = VLLMBackend(**settings)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        chats, sampling = msg
        try:
            conn.send(("ok", backend.generate(chats, sampling)))
        except Exception as e:  # sent back and re-raised in the parent
            conn.send(("error", e))


class _Replica:
    """One data-parallel engine in its own process (spawned: CUDA does not survive fork)."""

    def __init__(self, settings: dict[str, Any], gpus: list[str]):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: vLLM starts its own engine processes, which daemons may not have.
        self.proc = ctx.Process(target=_replica_main, args=(child, settings, gpus))
        self.proc.start()

    def send(self, chats: list[Chat], sampling: Sampling) -> None:
        self.conn.send((chats, sampling))

    def receive(self) -> list[Completion]:
        status, value = self.conn.recv()
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftover engine processes
        self.proc.join(5)
