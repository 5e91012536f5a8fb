"""Direct Preference Optimization (sigmoid loss) from an SFT checkpoint.

The reference policy is the starting model, either as a frozen copy kept in memory
(`train.objective.reference=model`; with LoRA the same weights with adapters switched off, no
copy), or as log-probs computed once before training (`train.objective.reference=precomputed`:
no second model in memory; the values live in a buffer so a resumed run keeps the original
reference, and in a cache file of the run folder, matrix.train.reference, so a rerun on the
same model and data skips the pass). The frozen copy's weights are bf16 on a GPU
(`train.objective.reference_dtype=auto`): under bf16 mixed precision its matmuls run in bf16
anyway, and it takes half the memory of an fp32 copy. On a CPU `auto` keeps fp32: the copy is
then the exact starting model, and most CPUs have no bf16 matrix units to gain from.
Under FSDP2 (`trainer=fsdp`) the copy is sharded like the policy: each rank holds 1/ranks of it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig
from torch.distributed.fsdp import FSDPModule

from matrix.train.lm import CausalLMModule, RunContext
from matrix.train.loss import labelled_logps
from matrix.train.reference import (
    REFERENCE_DTYPES,
    ReferenceCache,
    data_fingerprint,
    fill_reference,
    model_fingerprint,
    reference_dtype_for,
)

log = logging.getLogger(__name__)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    chosen_r, rejected_r, m = chosen_reward.detach(), rejected_reward.detach(), margin.detach()
    metrics = {
        "loss": float(loss.detach()),
        "rewards/chosen": float(chosen_r.mean()),
        "rewards/rejected": float(rejected_r.mean()),
        "rewards/accuracy": float((m > 0).float().mean()),
        "rewards/margin": float(m.mean()),
        "logps/chosen": float(policy_chosen.detach().mean()),
        "logps/rejected": float(policy_rejected.detach().mean()),
    }
    return loss, metrics


def batch_sequence_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Summed label log-prob of each sequence of a padded or packed batch: what
    `lm.sequence_logps` gives from full logits, computed from hidden states a slice at a time
    (no `[tokens x vocabulary]` logits; see matrix/train/loss.py)."""
    lp = labelled_logps(model, batch)
    ids = batch["seq_ids"][:, 1:][lp.mask]
    out = torch.zeros(batch["n_sequences"], dtype=lp.logps.dtype, device=lp.logps.device)
    return out.index_add(0, ids, lp.logps)


def pair_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    logps = batch_sequence_logps(model, batch)
    return logps[0::2], logps[1::2]  # sequences alternate chosen, rejected


@dataclass(frozen=True)
class PairStats:
    """Per pair of a batch: summed label log-probs and labelled-token counts of the chosen
    and the rejected answer (what length-normalised preference losses need)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.chosen, self.rejected, self.chosen_tokens, self.rejected_tokens)

    @staticmethod
    def cat(parts: list[PairStats]) -> PairStats:
        return PairStats(*(torch.cat(t) for t in zip(*(p.tensors() for p in parts), strict=True)))


def pair_stats(model: torch.nn.Module, batch: dict) -> PairStats:
    """`PairStats` of a padded or packed batch of pairs, from one forward pass."""
    lp = labelled_logps(model, batch)
    ids = batch["seq_ids"][:, 1:][lp.mask]
    n = batch["n_sequences"]
    sums = torch.zeros(n, dtype=lp.logps.dtype, device=lp.logps.device).index_add(0, ids, lp.logps)
    counts = torch.zeros(n, dtype=lp.logps.dtype, device=lp.logps.device).index_add(
        0, ids, torch.ones_like(lp.logps)
    )
    return PairStats(sums[0::2], sums[1::2], counts[0::2], counts[1::2])


def preference_metrics(
    loss: torch.Tensor, chosen_reward: torch.Tensor, rejected_reward: torch.Tensor, s: PairStats
) -> dict[str, float]:
    """The metrics every preference objective logs, under DPO's names (rewards as the
    objective defines them), so runs of different objectives line up in a comparison."""
    margin = (chosen_reward - rejected_reward).detach()
    return {
        "loss": float(loss.detach()),
        "rewards/chosen": float(chosen_reward.detach().mean()),
        "rewards/rejected": float(rejected_reward.detach().mean()),
        "rewards/accuracy": float((margin > 0).float().mean()),
        "rewards/margin": float(margin.mean()),
        "logps/chosen": float(s.chosen.detach().mean()),
        "logps/rejected": float(s.rejected.detach().mean()),
    }


class ReferenceFreePairsModule(CausalLMModule):
    """Base of preference objectives without a reference model (ORPO, SimPO): a subclass
    defines `pair_loss(stats) -> (loss, metrics)`; validation applies it to every pair of the
    validation set at once, so each pair weighs the same."""

    rows = "pairs"

    def pair_loss(self, s: PairStats) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, self.step_metrics = self.pair_loss(pair_stats(self.model, batch))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        s = pair_stats(self.model, batch)
        self._val_parts.append(PairStats(*(t.detach() for t in s.tensors())))

    def validation_metrics(self) -> dict[str, float]:
        s = PairStats.cat(self._val_parts)
        return {**self.pair_loss(s)[1], "pairs": len(s.chosen)}


class DPOModule(CausalLMModule):
    """DPO's sigmoid loss against a reference policy (conf/objective/dpo.yaml: `beta`,
    `reference`, `reference_dtype`)."""

    rows = "pairs"

    @classmethod
    def context(cls, run: RunContext) -> dict:
        # the precomputed reference's buffer, and its cache's key for the model
        return {"n_pairs": len(run.data), "model_fingerprint": model_fingerprint(run.cfg)}

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: DictConfig,
        scheduler: DictConfig,
        total_steps: int,
        beta: float = 0.1,
        reference: Literal["model", "precomputed"] = "model",
        reference_dtype: Literal["auto", "float32", "bfloat16"] = "auto",
        n_pairs: int = 0,
        model_fingerprint: str | None = None,
        clip_norm: float | None = None,
    ):
        super().__init__(model, optimizer, scheduler, total_steps, clip_norm)
        if reference not in ("model", "precomputed"):
            raise ValueError(
                f"train.objective.reference={reference!r}; choose model or precomputed"
            )
        if reference_dtype not in REFERENCE_DTYPES:
            raise ValueError(
                f"train.objective.reference_dtype={reference_dtype!r}; "
                f"choose one of {tuple(REFERENCE_DTYPES)}"
            )
        self.beta = beta
        self.reference = reference
        self.reference_dtype = reference_dtype
        self.model_fingerprint = model_fingerprint
        self.uses_adapters = hasattr(model, "disable_adapter")
        self.ref_model = None
        if reference == "model" and not self.uses_adapters:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        # NaN = not computed yet; filled once from the starting model, then saved in checkpoints
        self.register_buffer("ref_logps", torch.full((n_pairs, 2), float("nan")))

    @contextlib.contextmanager
    def _reference(self):
        """The reference policy: the frozen copy, or the LoRA model with adapters off."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        with self.model.disable_adapter():
            yield self.model

    @torch.no_grad()
    def reference_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference == "precomputed":
            ref = self.ref_logps[batch["example_index"]]
            return ref[:, 0], ref[:, 1]
        with self._reference() as ref_model:
            was_training = ref_model.training
            ref_model.eval()
            out = pair_logps(ref_model, batch)
            ref_model.train(was_training)
        return out

    def setup(self, stage: str) -> None:
        # before the strategy moves the module to its device: no fp32 copy ever reaches a GPU
        if self.ref_model is not None:
            strategy = self.trainer.strategy
            # FSDP1 flattens each wrapped unit's parameters into one tensor of one dtype: its
            # root unit holds both models' embeddings and norms, so `auto` keeps fp32 there.
            # FSDP2 (configure_model) shards each parameter on its own (a DTensor, no flat
            # tensor) and the copy in units of its own, all bf16: `auto` is bf16 there too.
            self._cast_reference(strategy.root_device, isinstance(strategy, FSDPStrategy))

    def configure_model(self) -> None:
        """FSDP2: the policy is sharded (CausalLMModule), then the frozen copy the same way
        (per decoder layer, then its root; same mesh and mixed precision), so each rank holds
        1/ranks of it too; its log-probs take the sharded route of matrix.train.loss."""
        super().configure_model()
        shard = getattr(self._trainer.strategy, "shard", None) if self._trainer else None
        if shard is None or self.ref_model is None or isinstance(self.ref_model, FSDPModule):
            return  # not sharding, no copy, or sharded already (validate after fit)
        shard(self.ref_model, frozen=True)
        params = list(self.ref_model.parameters())
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
        log.info(
            "DPO: reference copy sharded, rank %d holds %d of its %d parameters",
            self.global_rank,
            local,
            sum(p.numel() for p in params),
        )

    def on_fit_start(self) -> None:
        if self.ref_model is not None:
            # The frozen reference copy is in eval mode on purpose; Lightning's "Found N
            # module(s) in eval mode" warning is silenced for exactly its N modules, so eval
            # modules of the policy (a real bug) still warn, with another count.
            n = sum(1 for _ in self.ref_model.modules())
            warnings.filterwarnings(
                "ignore", message=rf"Found {n} module\(s\) in eval mode at the start of training"
            )
        if self.reference != "precomputed" or not torch.isnan(self.ref_logps).any():
            return  # nothing to do, or restored from a checkpoint
        self.precompute_reference()

    def _cast_reference(self, device: torch.device, flattened: bool = False) -> None:
        """The frozen copy's parameters to `reference_dtype` (buffers such as the rotary
        frequencies stay fp32: rounded, they would shift every position's phase)."""
        dtype = reference_dtype_for(self.reference_dtype, device.type == "cuda", flattened)
        for p in self.ref_model.parameters():
            p.data = p.data.to(dtype)
        log.info("DPO: reference copy in %s on %s", dtype, device.type)

    def precompute_reference(self) -> None:
        """Every pair's reference log-probs from the starting model (the policy before its
        first step), validation pairs included, or from the run folder's cache when it was
        made for this model and these pairs."""
        dm = self.trainer.datamodule
        key = {"model": self.model_fingerprint or "", "data": data_fingerprint(dm.examples)}
        cache = ReferenceCache(Path(self.trainer.default_root_dir), key)
        stored = cache.load(len(self.ref_logps))
        if stored is not None:
            self.ref_logps.copy_(stored.to(self.ref_logps))
        todo = int(torch.isnan(self.ref_logps).any(1).sum())
        log.info(
            "DPO: reference log-probs of %d pairs, %d cached",
            len(self.ref_logps),
            len(self.ref_logps) - todo,
        )
        bs = dm.batch_size
        batches = [u[s : s + bs] for u in (dm.units, dm.val_units) for s in range(0, len(u), bs)]

        def logps_of(units: list[list[int]]):
            batch = self.trainer.strategy.batch_to_device(dm.collate_units(units))
            return (batch["example_index"], *pair_logps(self.model, batch))

        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            fill_reference(
                self.ref_logps, batches, logps_of, cache if self.trainer.is_global_zero else None
            )
        self.model.train(was_training)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ref_chosen, ref_rejected = self.reference_logps(batch)
        chosen, rejected = pair_logps(self.model, batch)
        loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        self.step_metrics = metrics
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        ref_chosen, ref_rejected = self.reference_logps(batch)
        chosen, rejected = pair_logps(self.model, batch)
        self._val_parts.append((chosen, rejected, ref_chosen, ref_rejected))

    def validation_metrics(self) -> dict[str, float]:
        """dpo_loss over every validation pair at once: each pair weighs the same."""
        parts = zip(*self._val_parts, strict=True)
        chosen, rejected, ref_chosen, ref_rejected = (torch.cat(t) for t in parts)
        _, m = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        # the training metrics' names, so train/ and val/ curves line up in W&B
        return {**m, "pairs": len(chosen)}

    def state_dict(self, *args, **kwargs):
        # The frozen copy is the starting checkpoint on disk; no need to store it again.
        # FSDP2's checkpoints (Lightning's ModelParallelStrategy: torch.distributed.checkpoint's
        # get_model_state_dict on this module) call this method too: they hold the policy only.
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("ref_model.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        if self.ref_model is not None:
            ref = {f"ref_model.{k}": v for k, v in self.ref_model.state_dict().items()}
            state_dict = {**state_dict, **ref}
        return super().load_state_dict(state_dict, strict=strict, **kwargs)
