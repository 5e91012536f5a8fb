"""The merged weights of a sharded LoRA model, for the HF folder (matrix.train.export).

A sharded PeftModel's parameters are shards on every rank: peft's `merge_and_unload` cannot
fold them in place. Rank 0 gathers the full state dict (base and adapter weights under peft's
names, matrix.train.sharding.full_state_dict), loads it into an unsharded copy of the same
peft model built on the meta device from the same configs (no weights allocated until the
gathered tensors are assigned), and lets peft merge that copy: the export is the one an
unsharded LoRA run makes, by the same peft code.
"""

from __future__ import annotations

import copy

import torch

from matrix.train.sharding import tied_copies


def merged_lora_model(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """The plain HF model (adapters merged by peft) of the (sharded) PeftModel `model`, whose
    full state dict `state` was gathered on this rank."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(copy.deepcopy(base.config))
        peft_model = get_peft_model(plain, config, adapter_name=model.active_adapter)
    tied = tied_copies(peft_model)  # before the assignment unties them
    missing, unexpected = peft_model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - tied:
        raise KeyError(
            f"the gathered LoRA state does not fit its model: missing "
            f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    peft_model.tie_weights()  # the tied head: the gathered state leaves its copy out
    merged = peft_model.merge_and_unload()
    merged.generation_config = copy.deepcopy(base.generation_config)
    return merged
