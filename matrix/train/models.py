"""Tokenizer and model construction from `cfg.model`.

`model.init=pretrained` loads weights from `model.path` (an HF folder, a cached hub id, or
`embedded:...`); `model.init=random` builds `model.config` (a transformers config dict) from
scratch with the tokenizer at `model.path`, seeded, which is what the fast `tiny_debug`
preset uses. LoRA / QLoRA wrap the result through peft. `model.compile=layers` compiles each
decoder layer with `torch.compile` (matrix.train.compiled); `model.cross_entropy` picks the
loss kernel (matrix.train.loss).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from matrix.llm.chat import set_chat_template
from matrix.llm.embedded import resolve_model_path
from matrix.train.attention import VARLEN, register_varlen
from matrix.train.compiled import compile_layers
from matrix.train.loss import set_cross_entropy

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(mcfg: DictConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(str(mcfg.path)))
    set_chat_template(tok, mcfg.get("chat_template"))
    if tok.pad_token_id is None:
        # Padding positions never carry loss or attention; any id works, eos is always there.
        tok.pad_token = tok.eos_token
    return tok


def context_length(mcfg: DictConfig) -> int | None:
    """The model's maximum positions, read from config only (no weights loaded)."""
    if mcfg.get("init") == "random":
        return OmegaConf.to_container(mcfg.config).get("max_position_embeddings")
    path = Path(resolve_model_path(str(mcfg.path)))
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        return None
    data = json.loads(cfg_file.read_text())
    data = data.get("text_config", data)
    return data.get("max_position_embeddings")


def build_model(mcfg: DictConfig, tokenizer, attn_implementation: str, seed: int):
    """The model to train (in training mode), from `model.path` or a random `model.config`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = DTYPES[str(mcfg.get("dtype", "float32"))]
    if attn_implementation == VARLEN:
        register_varlen()
    kwargs: dict = {"attn_implementation": attn_implementation, "dtype": dtype}
    lora = mcfg.get("lora") or {}
    if lora.get("enabled") and lora.get("quantize_4bit"):
        kwargs["quantization_config"] = _qlora_config(dtype)
    if mcfg.get("init") == "random":
        spec = OmegaConf.to_container(mcfg.config, resolve=True)
        config = AutoConfig.for_model(
            **spec,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)  # same seed, same initial weights
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(str(mcfg.path)), **kwargs)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # a KV cache is dead weight during training
    if mcfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.get("enabled"):
        model = _wrap_lora(model, lora)
    set_cross_entropy(model, str(mcfg.get("cross_entropy", "chunked")))
    if str(mcfg.get("compile", "none")) == "layers":
        compile_layers(model)  # after LoRA: the adapters are inside the compiled layers
    # from_pretrained returns eval mode, and Lightning keeps each module's mode as it finds
    # it: without this, dropout (LoRA's included) and transformers' gradient checkpointing,
    # which only runs in training mode, would be silently off during training
    return model.train()


def _qlora_config(compute_dtype: torch.dtype):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise RuntimeError(
            "model.lora.quantize_4bit=true (QLoRA) needs bitsandbytes and a CUDA device; "
            "`pip install bitsandbytes` on a GPU machine or set model.lora.quantize_4bit=false"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype if compute_dtype != torch.float32 else torch.bfloat16,
    )


def _wrap_lora(model, lora: DictConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if lora.get("quantize_4bit"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = lora.get("target_modules", "all-linear")
    config = LoraConfig(
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "LoRA: %d / %d parameters trainable (%.2f%%)", trainable, total, 100 * trainable / total
    )
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
