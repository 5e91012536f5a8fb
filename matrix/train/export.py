"""The final Hugging Face folder: weights (LoRA merged), tokenizer, chat template, provenance
and the model card (README.md, matrix.core.model_card: base model and licence, data lineage,
training settings; evaluate runs add their scores).

`AutoModelForCausalLM.from_pretrained(<stage dir>/hf_model)` loads it with no matrix code, and
evaluate / vLLM can serve it directly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from matrix.common.io import write_json
from matrix.core.model_card import TrainedModel, write_card
from matrix.core.stage import stage_folder
from matrix.train.datamodule import data_path
from matrix.train.sharded_export import merged_lora_model
from matrix.train.sharding import full_state_dict

log = logging.getLogger(__name__)

# the final metrics a card shows (every metric is in the train folder's report.md)
CARD_METRICS = (
    "train/loss",
    "val/loss",
    "train/rewards/accuracy",
    "train/rewards/margin",
    "val/rewards/accuracy",
    "val/rewards/margin",
)


def trained_model(
    cfg: DictConfig, trainer: L.Trainer, epochs: float, counts: dict, final_metrics: dict
) -> TrainedModel:
    """The facts the model card states, from the run's config and outcome (`counts`: the
    data module's row and token counts)."""
    t, m, world = cfg.trainer, cfg.model, trainer.world_size
    objective = OmegaConf.to_container(cfg.train.objective, resolve=True)
    target = str(objective.pop("_target_"))
    settings = {
        "objective": target.rpartition(".")[2].removesuffix("Module").upper(),
        "objective_class": target,
        **{f"objective.{k}": v for k, v in objective.items()},
        "optimizer": str(cfg.optimizer._target_),
        "learning_rate": float(cfg.optimizer.lr),
        "scheduler": str(cfg.scheduler._target_),
        "epochs": epochs,
        "optimizer_steps": trainer.global_step,
        "batch_size_per_device": int(cfg.data.batch_size),
        "gradient_accumulation": int(t.accumulate_grad_batches),
        "devices": world,
        "rows_per_step": int(cfg.data.batch_size) * int(t.accumulate_grad_batches) * world,
        "max_seq_len": int(cfg.data.max_seq_len),
        "packing": bool(cfg.data.packing),
        "precision": str(t.precision),
        "lora": f"r={m.lora.r}, alpha={m.lora.alpha}" if m.lora.enabled else "off",
        "seed": int(cfg.seed),
    }
    return TrainedModel(
        name=f"{cfg.run.name}/{stage_folder(cfg, 'train')}",
        base_model=str(m.path),
        init=str(m.init),
        license=m.get("license"),
        license_notice=m.get("license_notice"),
        data_file=data_path(cfg),
        data_counts=counts,
        settings=settings,
        final_metrics={k: float(final_metrics[k]) for k in CARD_METRICS if k in final_metrics},
    )


def save_hf_folder(
    trainer: L.Trainer,
    module: L.LightningModule,
    tokenizer,
    out: Path,
    provenance: dict,
    card: TrainedModel | None = None,
) -> Path | None:
    state = full_state_dict(trainer, module.model)
    if not trainer.is_global_zero:
        return None
    model = module.model
    if state is not None and hasattr(model, "merge_and_unload"):  # sharded LoRA
        model, state = merged_lora_model(model, state), None
    elif hasattr(model, "merge_and_unload"):  # LoRA: fold adapters into the base weights
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.use_cache = True  # restore for inference
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)  # includes chat_template.jinja
    write_json(tmp / "matrix_train.json", provenance)
    if card is not None:
        write_card(tmp, card)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("saved Hugging Face model to %s", out)
    return out
