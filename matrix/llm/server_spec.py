"""What a local vLLM server serves and how: `ServeSpec` turns into the vLLM command line
(`args`), the `python -m matrix.llm.server` command that serves it again (`command`), and the
override that points every stage at it (`llm_override`).

The CPU build's sampler cannot rewind a CPU random generator (`RuntimeError: CPU Generator
does not use offset`, vllm/v1/worker/gpu_model_runner.py): it tries to whenever a seeded
request's prompt is prefilled in chunks, and the engine dies. On the CPU build the server is
therefore started with chunked prefill off and a token budget of at least one full context,
so no prompt is ever split and every seeded request can be served.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from matrix.llm.embedded import smollm2_hf_dir

DEFAULT_BATCHED_TOKENS = 2048  # vLLM's default max_num_batched_tokens


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
        """The command-line overrides that point every stage's roles at this server (with the
        served folder as the tokenizer whose chat template Magpie-style sampling renders)."""
        override = (
            f"llm=smollm2_server llm.backends.server.model={self.served_name} "
            f"llm.backends.server.base_url=http://127.0.0.1:{self.port}/v1"
        )
        if self.model_dir:
            override += " " + shlex.quote(f"llm.backends.server.tokenizer={self.model_dir}")
        return override
