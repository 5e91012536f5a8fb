"""Sharded data parallel: the Lightning strategy for `trainer.strategy` and the full weights
the export gathers from it.

    trainer.strategy: fsdp2   # FSDP2 (torch `fully_shard`, per-parameter DTensor shards) through
                              # Lightning's ModelParallelStrategy: the project's FSDP path
    trainer.strategy: fsdp    # FSDP1 (the FullyShardedDataParallel wrapper, Lightning's
                              # FSDPStrategy): kept for runs that used it; CUDA only

Both read `trainer.fsdp` (sharding_strategy, activation_checkpointing, cpu_offload,
state_dict_type) and shard every decoder layer class the model names in `_no_split_modules`
(Llama, Qwen, ... alike), then the root (embeddings, final norm, head). FSDP2 runs on CPU
processes over gloo too, which is how the tests check it (tests/train/test_fsdp2.py).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from omegaconf import DictConfig

from matrix.common.validation import ConfigProblems
from matrix.train.loss import SHARDED_LOGPS, model_labelled_logps

FSDP2 = "fsdp2"
FSDP1 = "fsdp"
SHARDED = (FSDP1, FSDP2)


def decoder_layers(model: torch.nn.Module) -> set[type]:
    """The decoder layer classes of a (possibly LoRA-wrapped) HF model: its `_no_split_modules`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or [])
    layers = {type(m) for m in inner.modules() if type(m).__name__ in names}
    if not layers:
        raise ValueError(f"FSDP: cannot find decoder layer classes {names} in the model")
    return layers


def check_strategy(cfg: DictConfig, p: ConfigProblems) -> None:
    """`trainer.strategy` is one Lightning or this module knows, and what a sharded strategy
    needs from the config holds, before any model loads."""
    from lightning.pytorch.strategies import StrategyRegistry

    t = cfg.trainer
    known = ("auto", FSDP2, *StrategyRegistry.available_strategies())
    if t.strategy not in known:
        p.add(
            "trainer.strategy",
            f"trainer.strategy={t.strategy} is not a strategy: pick a preset (trainer=ddp, "
            "trainer=fsdp for FSDP2, trainer=fsdp1 for the FSDP1 wrapper) or one of "
            f"auto, {FSDP2}, {', '.join(StrategyRegistry.available_strategies())}",
        )
    if t.strategy not in SHARDED:
        return
    f = t.get("fsdp")
    if f is None:
        p.add(
            "trainer.fsdp",
            f"trainer.strategy={t.strategy} needs a trainer.fsdp block (start from trainer=fsdp)",
        )
        return
    if t.strategy != FSDP2:
        return
    if f.sharding_strategy == "NO_SHARD":
        p.add(
            "trainer.fsdp.sharding_strategy",
            "FSDP2 has no NO_SHARD: use trainer=ddp to replicate the model, or FULL_SHARD",
        )
    if f.cpu_offload:
        p.add(
            "trainer.fsdp.cpu_offload",
            "trainer.fsdp.cpu_offload=true is not supported with trainer.strategy=fsdp2 (the "
            "strategy moves the shards to the GPU); set it false, or use trainer.strategy=fsdp",
        )
    lora = cfg.model.get("lora") or {}
    if lora.get("enabled") and lora.get("quantize_4bit"):
        p.add(
            "model.lora.quantize_4bit",
            "QLoRA (model.lora.quantize_4bit=true) is not supported with trainer.strategy=fsdp2 "
            "(sharding bitsandbytes' 4-bit weights is untested); use trainer=ddp, or LoRA on "
            "unquantized weights (model.lora.quantize_4bit=false)",
        )


def build_strategy(cfg: DictConfig, model: torch.nn.Module):
    """Lightning's strategy for `trainer.strategy` (its own name when not a sharded one)."""
    t = cfg.trainer
    if t.strategy == FSDP2:
        return FSDP2Strategy(decoder_layers(model), t.fsdp, str(t.precision))
    if t.strategy != FSDP1:
        return t.strategy
    layers = decoder_layers(model)
    f = t.fsdp
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if f.activation_checkpointing else None,
        sharding_strategy=f.sharding_strategy,
        state_dict_type=f.state_dict_type,
        limit_all_gathers=True,
        cpu_offload=bool(f.cpu_offload),
    )


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as pure data parallel (every rank one data-parallel shard, no
    tensor parallelism) that shards the LightningModule's model in `shard`, which
    CausalLMModule.configure_model calls once the process group and device mesh exist."""

    def __init__(self, layers: set[type], fsdp: DictConfig, precision: str):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=fsdp.state_dict_type == "sharded",
        )
        self.layers = tuple(layers)
        self.fsdp = fsdp
        self.precision = precision

    def setup_environment(self) -> None:
        # "auto" would make the data-parallel size the node count (tensor parallel in a node)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard(self, model: torch.nn.Module, frozen: bool = False) -> None:
        """Shard `model` over the data-parallel ranks; `frozen`: a model that only runs under
        no_grad (DPO's reference copy): the same units, mesh and mixed precision, no
        activation checkpointing."""
        shard_model(model, self.layers, self.fsdp, self.precision, self.mesh(), frozen)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """A full (one-file) checkpoint is loaded into every parameter and buffer the module
        registers, but a module's state_dict may leave some out (DPO's frozen reference copy,
        rebuilt from model.path): the file must hold every key of the module's state_dict,
        and only those are loaded. A sharded checkpoint loads the module's state_dict keys."""
        module = self.lightning_module
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir() or not module.strict_loading:
            return super().load_checkpoint(path, weights_only)
        saved = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        missing = sorted(set(module.state_dict()) - set(saved["state_dict"]))
        if missing:
            raise KeyError(f"checkpoint {path} lacks {len(missing)} model keys: {missing[:3]}")
        module.strict_loading = False  # the keys the state_dict leaves out
        try:
            return super().load_checkpoint(path, weights_only)
        finally:
            module.strict_loading = True

    def mesh(self):
        """The data-parallel mesh; HYBRID_SHARD: (replicate across nodes, shard in a node)."""
        if self.fsdp.sharding_strategy != "HYBRID_SHARD":
            return self.device_mesh["data_parallel"]
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(
            self.root_device.type,
            (self.num_nodes, self.num_processes),
            mesh_dim_names=("replicate", "shard"),
        )


def shard_model(
    model: torch.nn.Module,
    layers: tuple[type, ...],
    fsdp: DictConfig,
    precision: str,
    mesh,
    frozen: bool = False,
) -> None:
    """Checkpoint the activations of each decoder layer (when configured and not `frozen`),
    then `fully_shard` each layer and the root, in place. A model already sharded is left as
    it is (Lightning calls configure_model again for validate after fit)."""
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if isinstance(model, FSDPModule):
        return
    if fsdp.activation_checkpointing and not frozen:
        # transformers' own (non-reentrant) checkpointing of each decoder layer, which keeps
        # the module names: Lightning loads a full-state-dict checkpoint into the sharded model
        # by module name, and torch's checkpoint wrapper would rename every layer. Inside the
        # checkpoint FSDP2's forward hooks gather the layer; during the recompute its
        # pre-backward hook already has.
        model.activation_checkpointing_enable({"use_reentrant": False})
    mp = MixedPrecisionPolicy()
    if precision == "bf16-mixed":  # gather bf16 weights, reduce gradients in fp32
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # FULL_SHARD frees a layer's gathered weights after its forward (gathered again for the
    # backward); SHARD_GRAD_OP (ZeRO-2) keeps them until the backward, which a frozen model
    # never has: it would keep them gathered for good
    reshard = frozen or fsdp.sharding_strategy != "SHARD_GRAD_OP"
    units = [m for m in model.modules() if isinstance(m, layers)]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    # Training calls the decoder and the head directly (matrix.train.loss, no [tokens x
    # vocabulary] logits), not the root's forward: the root's gather and gradient reduction
    # run around this method instead.
    setattr(model, SHARDED_LOGPS, partial(_logps_tuple, model))
    register_fsdp_forward_method(model, SHARDED_LOGPS)


def _logps_tuple(model: torch.nn.Module, batch: dict, chunk: int | None):
    lp = model_labelled_logps(model, batch, chunk)
    return lp.logps, lp.mask  # tensors FSDP2 sees (its backward hooks attach to them)


def tied_copies(model: torch.nn.Module) -> set[str]:
    """Names under which a parameter is registered again (a head tied to the embeddings): the
    gathered state dict holds each as a copy, which the HF folder leaves out as it does for an
    unsharded model."""
    first: dict[int, str] = {}
    again = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            again.add(name)
    return again


def full_state_dict(trainer, model: torch.nn.Module) -> dict | None:
    """The full (unsharded) weights of `model` gathered on rank 0 (every rank must call): None
    when the strategy does not shard, {} off rank 0."""
    if isinstance(trainer.strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        return {k: v for k, v in state.items() if k not in tied_copies(model)}
    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(trainer.strategy.model, StateDictType.FULL_STATE_DICT, cfg):
        state = trainer.strategy.model.state_dict()
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
