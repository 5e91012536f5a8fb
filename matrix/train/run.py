"""`run_train(cfg)`: the train stage from a composed config (what `train.py` calls).

Order matters: validate everything (no model loaded), tokenize the data, pick the checkpoint
to resume from (`train.checkpoint.resume`, matrix.train.resume), open the stage run, build model +
Lightning trainer (with the `logger.lightning` logger, matrix.train.loggers), fit, export the HF
folder, write the manifest.

A resumed run continues in place: metrics.jsonl keeps the rows up to the checkpoint's step
(later ones are logged again, once), `train/tokens_seen` counts on from the checkpoint, the
W&B run id is the earlier attempt's, and the data loader, optimizer, scheduler and RNG states
come from the checkpoint, so the final weights equal an uninterrupted run's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from matrix.common.bad_rows import SHOWN
from matrix.common.io import JsonlLog
from matrix.common.tables import open_table
from matrix.core.cli import quiet_logs
from matrix.core.config_check import check_stage
from matrix.core.provenance import config_hash
from matrix.core.stage import open_stage, set_aside_stale, stage_dir
from matrix.train.attention import select_attention
from matrix.train.callbacks import LoaderPosition, RNGState, StepLogger
from matrix.train.components import build_callbacks
from matrix.train.datamodule import ChatDataModule, data_path
from matrix.train.export import save_hf_folder, trained_model
from matrix.train.lm import CausalLMModule, RunContext, objective_class
from matrix.train.loggers import build_logger
from matrix.train.memory import PeakMemory, resident_bytes
from matrix.train.memory_fit import fit_memory, show_plan
from matrix.train.models import build_model, count_parameters, load_tokenizer
from matrix.train.progress_bar import StageProgressBar
from matrix.train.resume import resume_point
from matrix.train.sharding import build_strategy

log = logging.getLogger(__name__)


def world_size(cfg: DictConfig) -> int:
    """Ranks the run will have (devices=-1 counts the visible GPUs)."""
    t = cfg.trainer
    devices = t.devices
    if devices == -1 or devices == "auto":
        devices = max(1, torch.cuda.device_count()) if t.accelerator != "cpu" else 1
    elif isinstance(devices, str | list) or not isinstance(devices, int):
        devices = len(devices) if not isinstance(devices, str) else len(devices.split(","))
    return int(devices) * int(t.num_nodes)


def steps_per_epoch(cfg: DictConfig, dm: ChatDataModule, world: int) -> int:
    """Optimizer steps in one epoch (a partial accumulation window steps too)."""
    return max(1, -(-dm.batches_per_epoch(world) // int(cfg.trainer.accumulate_grad_batches)))


def total_steps(cfg: DictConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run (a partial accumulation window at an epoch's end still
    steps, as Lightning does)."""
    t = cfg.trainer
    per_epoch = -(-batches_per_epoch // int(t.accumulate_grad_batches))
    epochs = int(t.max_epochs)
    by_epochs = per_epoch * epochs if epochs > 0 else None
    if int(t.max_steps) > 0:
        return min(int(t.max_steps), by_epochs) if by_epochs else int(t.max_steps)
    if by_epochs is None:
        raise ValueError("set trainer.max_epochs or trainer.max_steps")
    return by_epochs


def build_trainer(
    cfg: DictConfig, model, ckpt_dir: Path, callbacks: list, logger: Logger | None = None
) -> L.Trainer:
    """`logger`: Lightning's logger (`logger.lightning`, matrix.train.loggers), None for none."""
    t = cfg.trainer
    every = int(cfg.train.checkpoint.every_n_steps)
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=every or None,
        # every_n_steps=0 means at the end only (last.ckpt, written when fit ends): without
        # every_n_epochs=0 Lightning would also write one at every epoch's end
        every_n_epochs=None if every else 0,
        save_top_k=int(cfg.train.checkpoint.keep),
        monitor="step",
        mode="max",
        # last.ckpt links to the newest step checkpoint instead of a second full copy (16
        # bytes a parameter: 128 GB for an 8B model); resuming in place relinks it (never
        # last-v1.ckpt beside it)
        save_last="link",
        enable_version_counter=False,
    )
    save = bool(cfg.train.checkpoint.get("enabled", True))
    bar = bool(t.get("progress_bar", True))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=int(t.num_nodes),
        strategy=build_strategy(cfg, model),
        precision=t.precision,
        max_epochs=int(t.max_epochs),
        max_steps=int(t.max_steps),
        accumulate_grad_batches=int(t.accumulate_grad_batches),
        gradient_clip_val=None,  # the module clips (CausalLMModule.configure_gradient_clipping)
        callbacks=[
            LoaderPosition(),
            RNGState(),
            *callbacks,
            *([ckpt] if save else []),
            *([StageProgressBar()] if bar else []),
        ],
        # StepLogger's rows, through the module's self.log; metrics.jsonl is written either way
        logger=logger or False,
        log_every_n_steps=int(t.log_every_n_steps),  # the rows' cadence (StepLogger's too)
        enable_checkpointing=save,
        enable_progress_bar=bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # BatchPlan shards by rank itself
        deterministic=bool(t.get("deterministic", False)),
        num_sanity_val_steps=0,
        # validation (data.val_fraction > 0): Lightning's own schedule; an int interval counts
        # training batches (micro-batches), a float is a fraction of the epoch
        val_check_interval=t.get("val_check_interval"),
        check_val_every_n_epoch=t.get("check_val_every_n_epoch", 1),
        limit_val_batches=1.0 if cfg.data.get("val_fraction") else 0,  # 0: no validation loop
        default_root_dir=str(ckpt_dir.parent),
    )


def run_train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict | None:
    """Train SFT or DPO as configured; returns the manifest (None on non-zero ranks).
    `callbacks`: more Lightning callbacks for the fit (measurements, e.g. bench/train.py's)."""
    check_stage(cfg, "train")
    quiet_logs()  # Lightning, imported with this module, added its own console handler
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    tokenizer = load_tokenizer(cfg.model)
    dm = ChatDataModule.from_config(cfg, tokenizer)
    dm.setup()
    cuda = cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    if str((cfg.train.get("memory") or {}).get("plan", "auto")) == "show":
        return show_plan(cfg, dm, tokenizer, cuda, world_size(cfg))  # the table, no training

    rank_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0
    out = stage_dir(cfg, "train")
    if rank_zero:  # before the checkpoints are looked at: they may be another config's
        set_aside_stale(cfg, "train")
    start = resume_point(cfg, out / "checkpoints", config_hash(cfg, "train"), rank_zero)
    stage = open_stage(cfg, "train", resume=not start.fresh) if rank_zero else None
    kept = keep_metrics(stage, start.step)
    attn = select_attention(str(cfg.model.attn_implementation), bool(cfg.data.packing), cuda)
    held = resident_bytes()  # before the weights: the memory plan's runtime term
    model = build_model(cfg.model, tokenizer, attn, int(cfg.seed))
    # from here on, the config as the memory plan leaves it (matrix/train/memory_fit.py)
    cfg = fit_memory(
        cfg, dm, model, cuda, world_size(cfg), held, out, start.path is not None, rank_zero
    )
    module = build_module(cfg, model, dm)
    lightning_logger = build_logger(cfg, out, stage.wandb_run if stage else None)
    t = cfg.trainer
    logger = StepLogger(
        stage,
        int(t.log_every_n_steps),
        str(t.precision),
        wandb_via_lightning=isinstance(lightning_logger, WandbLogger),
    )
    logger.resume_from(kept)
    memory = PeakMemory(release=bool(t.get("release_freed_memory", False)))
    extra = [*build_callbacks(cfg), *callbacks]
    trainer = build_trainer(
        cfg, model, out / "checkpoints", [memory, logger, *extra], lightning_logger
    )
    ckpt = str(start.path) if start.path else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    if dm.val_units and (
        not logger.val_history or logger.val_history[-1]["step"] != trainer.global_step
    ):
        trainer.validate(module, datamodule=dm, verbose=False)  # the final model's val metrics

    hf_dir = None
    if bool(cfg.train.get("export", True)):
        hf_dir = export(cfg, trainer, module, tokenizer, dm, logger, stage)
    manifest = None
    if stage is not None:
        extra = {"attention": attn, "hf_model": str(hf_dir) if hf_dir else None}
        manifest = finish_training(cfg, stage, trainer, module, dm, logger, ckpt, extra)
    # The other ranks wait for rank 0's export and manifest: a pipeline step after this one
    # (DPO from this model) reads them on every rank.
    trainer.strategy.barrier("train_exported")
    return manifest


def export(cfg: DictConfig, trainer, module, tokenizer, dm, logger, stage) -> Path | None:
    """The Hugging Face folder with its provenance and model card (None off rank 0)."""
    provenance = {
        "objective": str(cfg.train.objective._target_),
        "base_model": str(cfg.model.path),
        "data": data_path(cfg),
        "config_hash": stage.config_hash if stage else None,
        "steps": trainer.global_step,
    }
    epochs = epochs_trained(cfg, dm, trainer)
    card = trained_model(cfg, trainer, epochs, dm.stats.as_counts(), final_metrics(logger))
    out = stage_dir(cfg, "train") / "hf_model"
    return save_hf_folder(trainer, module, tokenizer, out, provenance, card)


def keep_metrics(stage, step: int) -> list[dict]:
    """metrics.jsonl up to the resumed checkpoint's step: the rows an attempt killed after its
    last checkpoint logged past it are dropped (and logged again, once)."""
    if stage is None:
        return []
    dropped = stage.keep_metrics_through(step)
    if dropped:
        log.info("metrics.jsonl: dropped %d rows past step %d", dropped, step)
    return JsonlLog(stage.dir / "metrics.jsonl").read() if step else []


def build_module(cfg: DictConfig, model, dm: ChatDataModule) -> CausalLMModule:
    """The objective's LightningModule (`train.objective._target_`, a CausalLMModule
    subclass), with its options from the config and its context from the run."""
    cls = objective_class(cfg)
    options = {k: v for k, v in cfg.train.objective.items() if not str(k).startswith("_")}
    clip = cfg.trainer.get("gradient_clip_val")
    world = world_size(cfg)
    return cls(
        model,
        cfg.optimizer,
        cfg.scheduler,
        total_steps(cfg, dm.batches_per_epoch(world)),
        clip_norm=float(clip) if clip else None,
        **options,
        **cls.context(RunContext(cfg, dm, world)),
    )


def epochs_trained(cfg: DictConfig, dm: ChatDataModule, trainer: L.Trainer) -> float:
    """Epochs trained, from the step count: Lightning's epoch counter reads one less after a
    rerun that resumes from the final checkpoint than after the first run."""
    return round(trainer.global_step / steps_per_epoch(cfg, dm, trainer.world_size), 3)


def final_metrics(logger: StepLogger) -> dict:
    """The last training row with the last validation row's metrics (and its step)."""
    last = logger.history[-1] if logger.history else {}
    last_val = logger.val_history[-1] if logger.val_history else {}
    return {**last, **{k: v for k, v in last_val.items() if k != "step"}}


def finish_training(cfg, stage, trainer, module, dm, logger, ckpt, extra: dict) -> dict:
    """The manifest of a finished training run: counts, final metrics, where it resumed from."""
    final = final_metrics(logger)
    counts = {
        **dm.stats.as_counts(),
        "steps": trainer.global_step,
        "epochs": epochs_trained(cfg, dm, trainer),
        "batches_per_epoch": dm.batches_per_epoch(trainer.world_size),
        "packed_rows": len(dm.units) if dm.packing else None,
        "validation_rows": len(dm.val_ids),
        "tokens_trained_on": logger.tokens_seen,
        "parameters": count_parameters(module.model),
        "trainable_parameters": count_parameters(module.model, trainable_only=True),
    }
    stage.summary({k: v for k, v in final.items() if k != "step"})
    return stage.finish(
        counts,
        # what was read: for a cached dataset's name, its cache folder (hashed like any input)
        inputs={"data": open_table(data_path(cfg), "data.path", cfg.data.get("split")).path},
        extra={
            **extra,
            "final_metrics": final,
            "resumed_from": ckpt,
            "skipped_rows": dm.skipped[:SHOWN],
        },
    )
