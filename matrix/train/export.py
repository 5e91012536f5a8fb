"""The final Hugging Face folder: weights (LoRA merged), tokenizer, chat template, provenance.

`AutoModelForCausalLM.from_pretrained(<stage dir>/hf_model)` loads it with no matrix code, and
evaluate / vLLM can serve it directly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L

from matrix.common.io import write_json

log = logging.getLogger(__name__)


def _full_state_dict(trainer: L.Trainer, module: L.LightningModule) -> dict | None:
    """Gather sharded FSDP weights on rank 0 (all ranks must call); None off rank 0."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(trainer.strategy.model, StateDictType.FULL_STATE_DICT, cfg):
        state = trainer.strategy.model.state_dict()
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def save_hf_folder(
    trainer: L.Trainer, module: L.LightningModule, tokenizer, out: Path, provenance: dict
) -> Path | None:
    state = _full_state_dict(trainer, module)
    if not trainer.is_global_zero:
        return None
    model = module.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold adapters into the base weights
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.use_cache = True  # restore for inference
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)  # includes chat_template.jinja
    write_json(tmp / "matrix_train.json", provenance)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("saved Hugging Face model to %s", out)
    return out
