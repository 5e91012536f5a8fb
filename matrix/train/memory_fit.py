"""The memory plan of a train run (matrix.train.memory_plan) from its config, data and model,
and the changes it makes before the first step (`train.memory`):

    plan: auto   estimate; if it does not fit, turn on activation checkpointing, then lower
                 data.batch_size and raise trainer.accumulate_grad_batches (the effective batch
                 stays), saying so in one log line; a key set on the command line is kept
         show   print the plan's table and exit without training
         off    no plan
    headroom     the share of free memory the plan leaves unused
    limit_gb     plan against this many GB instead of the device's free memory

A resumed run applies the decision its first attempt saved (memory_plan.json in the stage
folder), so its batches are cut as the checkpoint's loader position counts them. A run of
more than one rank only reports: ranks that planned on different free memory would cut
different batches.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from matrix.common.io import read_json, write_json
from matrix.train.loss import supports_hidden_path
from matrix.train.memory import free_bytes, resident_bytes
from matrix.train.memory_plan import CUDA_CONTEXT, GB, Plan, Setup, Shape, decide, summary
from matrix.train.reference import reference_dtype_for
from matrix.train.sharding import FSDP1, FSDP2, SHARDED

log = logging.getLogger(__name__)

SAVED = "memory_plan.json"
KEYS = ("model.gradient_checkpointing", "data.batch_size", "trainer.accumulate_grad_batches")


def model_shape(model) -> Shape:
    """The shape the estimate needs, from the built model (a peft wrapper's too)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    config = getattr(config, "text_config", None) or config
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return Shape(
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        layers=int(config.num_hidden_layers),
        hidden=hidden,
        intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
        kv_width=kv_heads * head_dim,
        vocab=int(config.vocab_size),
    )


def batch_tokens(dm, rows: int) -> int:
    """Tokens of the largest micro-batch of `rows` units: packed, the `rows` longest units end
    to end; padded, every sequence (a DPO pair is two) padded to the longest one."""
    units = [dm.sequences(u) for u in dm.units] or [[]]
    if dm.packing:
        lengths = sorted((sum(len(s) for s in seqs) for seqs in units), reverse=True)
        return sum(lengths[:rows])
    longest = max((len(s) for seqs in units for s in seqs), default=0)
    per_unit = max(len(seqs) for seqs in units)
    return rows * per_unit * longest


def _optimizer_state(cfg: DictConfig) -> tuple[float, int | None]:
    """(state values per trainable parameter, bytes per value or None: the parameter's)."""
    target = str(cfg.optimizer.get("_target_", ""))
    if "8bit" in target.lower():
        return 2.0, 1
    if target.endswith("SGD"):
        return (1.0 if cfg.optimizer.get("momentum") else 0.0), None
    return 2.0, None  # Adam and its kin: two moments


def run_setup(cfg: DictConfig, dm, model, cuda: bool, world: int, held: int | None) -> Setup:
    """The planner's view of the run as configured. `held`: the process's resident bytes
    before the model was built (Python, torch, the tokenized data: the CPU runtime term; the
    weights, which may be mapped from their file and not yet resident, are a term of their
    own)."""
    precision = str(cfg.trainer.precision)
    low = not precision.startswith("32")
    fsdp = cfg.trainer.get("fsdp") if str(cfg.trainer.strategy) in SHARDED else None
    checkpointing = bool(cfg.model.get("gradient_checkpointing")) or bool(
        fsdp and fsdp.get("activation_checkpointing")
    )
    values, value_bytes = _optimizer_state(cfg)
    objective = cfg.train.objective
    reference = (
        str(objective._target_).endswith("DPOModule")
        and objective.get("reference", "model") == "model"
        and not hasattr(model, "disable_adapter")
    )
    ref_dtype = reference_dtype_for(
        str(objective.get("reference_dtype", "auto")), cuda, str(cfg.trainer.strategy) == FSDP1
    )
    return Setup(
        tokens=batch_tokens(dm, int(cfg.data.batch_size)),
        checkpointing=checkpointing,
        activation_bytes=2 if low else 4,
        weight_bytes_per_param=2 if precision.endswith("-true") and low else None,
        optimizer_values=values,
        optimizer_value_bytes=value_bytes,
        reference_copy=reference,
        reference_bytes_per_param=ref_dtype.itemsize,
        # FSDP2 shards the copy over every rank (matrix.train.sharding, frozen); FSDP1 wraps it
        # with the policy's units and strategy
        reference_shards=world if str(cfg.trainer.strategy) == FSDP2 else 0,
        chunked_loss=supports_hidden_path(model),
        runtime_bytes=CUDA_CONTEXT if cuda else (held or 0),
        shards=world if fsdp is not None and fsdp.get("sharding_strategy") == "FULL_SHARD" else 1,
    )


def command_line_keys() -> set[str]:
    """Config keys set on the command line (`key=value`, `+key=`, `++key=`), when Hydra ran
    the entry point; empty otherwise (a composed config: every key is the preset's)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    task = HydraConfig.get().overrides.task
    return {o.split("=", 1)[0].lstrip("+~") for o in task if "=" in o}


def plan_run(
    cfg: DictConfig,
    dm,
    model,
    cuda: bool,
    world: int = 1,
    held: int | None = None,
    explicit: set[str] | None = None,
) -> Plan:
    """The plan for this run of `world` ranks (`train.memory`): free memory read now (or
    `limit_gb`); `held`: see `run_setup`; `explicit`: keys the user set (default: the
    command line's)."""
    m = cfg.train.get("memory") or {}
    limit = m.get("limit_gb")
    if limit is not None:
        free = int(float(limit) * GB)
    elif cuda and world > 1:  # before Lightning picks each rank's GPU: reading would open a
        free = None  # CUDA context on GPU 0 from every rank
    else:
        free = free_bytes(_device(cuda))
    single = world == 1
    fsdp = str(cfg.trainer.strategy) == "fsdp"
    return decide(
        model_shape(model),
        run_setup(cfg, dm, model, cuda, world, held),
        int(cfg.data.batch_size),
        int(cfg.trainer.accumulate_grad_batches),
        free,
        float(m.get("headroom", 0.25)),
        lambda rows: batch_tokens(dm, rows),
        command_line_keys() if explicit is None else explicit,
        may_checkpoint=single and not fsdp,
        may_lower_batch=single,
    )


def _device(cuda: bool):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def apply(cfg: DictConfig, changes: dict, dm, model) -> DictConfig:
    """A copy of `cfg` with the plan's changes, applied to the data module and model too."""
    if not changes:
        return cfg
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))  # the caller's config stays as it was
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, merge=False)
    if "data.batch_size" in changes:
        dm.batch_size = int(changes["data.batch_size"])
    if changes.get("model.gradient_checkpointing"):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return cfg


def fit_memory(
    cfg: DictConfig,
    dm,
    model,
    cuda: bool,
    world: int,
    held: int | None,
    out: Path,
    resumed: bool,
    rank_zero: bool,
):
    """The config the run trains with (`train.memory.plan=auto`): a resumed run's saved
    decision, or this plan's changes (logged in one line, saved for a resume)."""
    m = cfg.train.get("memory") or {}
    if str(m.get("plan", "auto")) == "off":
        return cfg
    saved = out / SAVED
    if resumed and saved.is_file():
        changes = read_json(saved).get("changes", {})
        if changes:
            log.info("memory plan: as the run's first attempt, %s (%s)", changes, saved)
        return apply(cfg, changes, dm, model)
    plan = plan_run(cfg, dm, model, cuda, world, held)
    if plan.changes or not plan.fits:
        log.warning(summary(plan))
    else:
        log.info(summary(plan))
    if rank_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            saved, {"changes": plan.changes, "estimate_bytes": plan.total, "free_bytes": plan.free}
        )
    return apply(cfg, plan.changes, dm, model)


def show_plan(cfg: DictConfig, dm, tokenizer, cuda: bool, world: int) -> None:
    """`train.memory.plan=show`: build the model, print the plan's table, train nothing."""
    from matrix.train.attention import select_attention
    from matrix.train.memory_plan import table
    from matrix.train.models import build_model

    attn = select_attention(str(cfg.model.attn_implementation), bool(cfg.data.packing), cuda)
    held = resident_bytes()
    model = build_model(cfg.model, tokenizer, attn, int(cfg.seed))
    print(table(plan_run(cfg, dm, model, cuda, world, held)), flush=True)
