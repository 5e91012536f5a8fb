"""`model.compile=layers`: `torch.compile` on each decoder layer, not on the whole model.

A whole-model compile traces the embedding, every layer, the head and the loss as one graph:
minutes of compiling, recompiles whenever the packed row's length or the labelled-token count
changes, and graph breaks at transformers' mask and cache code. A decoder layer is the unit
that repeats: the layers of a model share one class, so dynamo compiles one graph and every
layer reuses it (parameters are graph inputs), and the fusions that matter (RMSNorm, rotary
embedding, SwiGLU, residual adds) all sit inside a layer. Activation checkpointing, LoRA
adapters and FSDP wrapping keep working, since each layer stays the same module object
(`Module.compile` compiles its forward in place).

Compiling happens lazily, inside the first steps. `compile_seconds()` reads how long dynamo
and its backend have spent so far, so the step logger (matrix.train.callbacks.StepLogger)
reports compile time on its own (`train/compile_s`, and a log line) and leaves it out of the
step time behind tokens/s and MFU.
"""

from __future__ import annotations

import logging
import sys

import torch

log = logging.getLogger(__name__)

# torch.compile's backend: inductor generates fused kernels (Triton on CUDA, C++ on CPU)
BACKEND = "inductor"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeating decoder blocks: modules of the classes the model names as never to be
    split (`_no_split_modules`, e.g. LlamaDecoderLayer), found through a peft wrapper too."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    return [m for m in inner.modules() if type(m).__name__ in names]


def compile_layers(model: torch.nn.Module, backend: str | None = None) -> int:
    """Compile every decoder layer in place; returns how many. A model whose layer class is
    unknown fails here rather than training uncompiled while the config says compiled."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"model.compile=layers: {type(model).__name__} names no decoder layer class "
            "(_no_split_modules); set model.compile=none"
        )
    for layer in layers:
        layer.compile(backend=backend or BACKEND)
    log.info(
        "compile: %d %s layers with torch.compile (backend %s); the first steps compile",
        len(layers),
        type(layers[0]).__name__,
        backend or BACKEND,
    )
    return len(layers)


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process (dynamo's own timers: tracing, the
    backend's code generation, the backward graph's compile); 0.0 when nothing compiled."""
    utils = sys.modules.get("torch._dynamo.utils")  # not imported: nothing compiled yet
    if utils is None:
        return 0.0
    return float(utils.calculate_time_spent().get("total_wall_time", 0.0))
