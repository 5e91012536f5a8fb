"""The peak memory of one training step, estimated before the first step, and what to change
when it does not fit (`train.memory`, docs/train.md "Memory plan").

The estimate is a sum of terms, each from the model's shape and the run's settings:

    runtime      what the process holds besides the weights (CPU: Python, torch, the tokenized
                 data: its resident set at planning time minus the weights; CUDA: the context)
    weights      every parameter as stored (bf16-true/16-true: 2 bytes each)
    gradients    one per trainable parameter, in its dtype
    optimizer    AdamW's two moments per trainable parameter (8-bit AdamW: 1 byte each)
    activations  tokens of the largest micro-batch x per-token bytes, below
    logits/loss  chunked loss: ~4 slices of CHUNK_ELEMENTS fp32 values (matrix/train/loss.py),
                 or of the whole batch's [tokens x vocabulary] when that is smaller;
                 a model on the full-logits path: 3 fp32 copies of [tokens x vocabulary]
    reference    DPO's frozen reference copy (train.objective.reference=model, no LoRA), in its
                 own dtype (train.objective.reference_dtype), split over the ranks that shard it

Activations per token, with e = bytes per activation value (4 in fp32, 2 under bf16/fp16):
a Llama-style decoder layer keeps for its backward pass the inputs of its norms and
projections, q/k before and after the rotary embedding, v, the attention output, and the
MLP's gate, up, activation and product: LAYER = 8*hidden + 3*kv_width + 4*intermediate values
(45 KB per token in fp32 for SmolLM2-135M). Without checkpointing every layer keeps them:

    layers * LAYER * e * FULL

With activation checkpointing each layer keeps only its input, and one layer at a time is
recomputed in the backward pass, its activations and their gradients alive together:

    (layers * hidden + 2 * LAYER) * e * CHECKPOINTED   (at most the first: a shallow model)

FULL and CHECKPOINTED are calibrated against the train stage's measured peak RSS on CPU
(SmolLM2-135M, fp32, AdamW, packed rows, the default glibc allocator, which keeps freed
blocks resident: docs/train.md "Memory per step"), so they carry the allocator's slack and
the small per-token terms outside the layers (embeddings, final norm, the loss's hidden
states). Measured peaks in GB at tokens per micro-batch, and this estimate:
  no checkpointing (FULL = 1.45): 10.25 at 4,176 (estimate 11.2); 17.3 at 8,150 (19.0);
  18-20 at <= 8,192, multi-turn chats with a long tail (19.1)
  checkpointing (CHECKPOINTED = 3.0): 5.76 at 8,192, the same kind of chats
  (bench/train_memory.py --stage; 4.59-5.21 on the first step, before AdamW's state exists)
  (6.87); 8.4 at <= 8,192 over a longer run of such chats (6.87)
Measured on fewer tokens the per-token cost is lower (3.10 GB at 1,024 checkpointed tokens in
bench/train_memory.py: ~0.1 MB a token against the 0.48 MB counted here): the factors are
fitted to the large batches a plan decides about, and over-estimate small ones.
The planner is asked never to under-estimate a measured peak by more than 25%, the share of
free memory it keeps unused (`train.memory.headroom`), so a plan that fits does not run out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from matrix.train.loss import CHUNK_ELEMENTS

GB = 1e9
LAYER_HIDDEN, LAYER_KV, LAYER_INTERMEDIATE = 8, 3, 4
FULL = 1.45  # calibrated: see the module docstring
CHECKPOINTED = 3.0  # calibrated: see the module docstring
CUDA_CONTEXT = int(0.5 * GB)  # CUDA context and kernels, outside torch's allocator
LOSS_SLICES = 4  # slices of CHUNK_ELEMENTS fp32 values the chunked loss's backward holds
FULL_LOGITS_COPIES = 3  # logits, their fp32 upcast and log-softmax (the full-logits path)


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from the model."""

    weight_bytes: int  # every parameter as loaded
    params: int  # parameter count
    trainable: int  # trainable parameter count
    trainable_bytes: int  # their bytes (gradients have the same dtype)
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # key/value heads x head dim
    vocab: int

    @property
    def layer_values(self) -> int:
        """Values a decoder layer keeps per token for its backward pass."""
        return (
            LAYER_HIDDEN * self.hidden
            + LAYER_KV * self.kv_width
            + LAYER_INTERMEDIATE * self.intermediate
        )


@dataclass(frozen=True)
class Setup:
    """What the run asks for."""

    tokens: int  # tokens of the largest micro-batch
    checkpointing: bool
    activation_bytes: int = 4  # per value: 4 in fp32, 2 under bf16/fp16 precision
    weight_bytes_per_param: int | None = None  # bf16-true/16-true: 2; None: as loaded
    optimizer_values: float = 2.0  # optimizer state values per trainable parameter
    optimizer_value_bytes: int | None = None  # None: the parameters' dtype
    reference_copy: bool = False  # DPO's frozen reference model
    reference_bytes_per_param: int | None = None  # its dtype (bf16: 2); None: the weights'
    reference_shards: int = 0  # ranks it is split over at rest; 0: as the weights (`shards`)
    chunked_loss: bool = True
    runtime_bytes: int = 0
    shards: int = 1  # FSDP full shard: weights, gradients and optimizer split across ranks


def activation_bytes_per_token(shape: Shape, checkpointing: bool, value_bytes: int) -> float:
    full = shape.layers * shape.layer_values * value_bytes * FULL
    if not checkpointing:
        return full
    values = shape.layers * shape.hidden + 2 * shape.layer_values
    # a shallow model gains little from checkpointing; it never keeps more than without it
    return min(full, values * value_bytes * CHECKPOINTED)


def _reference(shape: Shape, s: Setup, weights: float) -> int:
    """DPO's frozen copy: the weights once more, in its own dtype, split over the ranks
    that shard it (FSDP2 frees its gathered layers after each forward, whatever the policy's
    sharding strategy)."""
    if not s.reference_copy:
        return 0
    size = shape.params * s.reference_bytes_per_param if s.reference_bytes_per_param else weights
    return int(size / (s.reference_shards or s.shards))


def terms(shape: Shape, s: Setup) -> dict[str, int]:
    """Each term of the estimate in bytes (the module docstring says what each holds)."""
    weights = (
        shape.params * s.weight_bytes_per_param if s.weight_bytes_per_param else shape.weight_bytes
    )
    per_param = shape.trainable_bytes / max(shape.trainable, 1)
    if s.weight_bytes_per_param:
        per_param = s.weight_bytes_per_param
    grads = shape.trainable * per_param
    opt = shape.trainable * s.optimizer_values * (s.optimizer_value_bytes or per_param)
    if s.chunked_loss:
        loss = LOSS_SLICES * min(CHUNK_ELEMENTS, s.tokens * shape.vocab) * 4
    else:
        loss = FULL_LOGITS_COPIES * s.tokens * shape.vocab * 4
    act = s.tokens * activation_bytes_per_token(shape, s.checkpointing, s.activation_bytes)
    return {
        "runtime": int(s.runtime_bytes),
        "weights": int(weights / s.shards),
        "gradients": int(grads / s.shards),
        "optimizer": int(opt / s.shards),
        "activations": int(act),
        "logits/loss": int(loss),
        "reference": _reference(shape, s, weights),
    }


def estimate(shape: Shape, s: Setup) -> int:
    return sum(terms(shape, s).values())


@dataclass
class Plan:
    """The estimate for the run as configured and, when it does not fit, what changes."""

    terms: dict[str, int]
    free: int | None  # bytes this run can use; None: unknown
    headroom: float
    batch_size: int
    accumulate: int
    checkpointing: bool
    changes: dict[str, object] = field(default_factory=dict)  # key -> new value
    kept: list[str] = field(default_factory=list)  # explicit keys that blocked a change
    first_total: int = 0  # the estimate before any change

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def budget(self) -> int | None:
        return None if self.free is None else int(self.free * (1 - self.headroom))

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget


def _divisors_below(n: int) -> list[int]:
    return [d for d in range(n - 1, 0, -1) if n % d == 0]


def decide(
    shape: Shape,
    setup: Setup,
    batch_size: int,
    accumulate: int,
    free: int | None,
    headroom: float,
    tokens_for,
    explicit: set[str] = frozenset(),
    may_checkpoint: bool = True,
    may_lower_batch: bool = True,
) -> Plan:
    """The plan for `setup`, changed until it fits `free * (1 - headroom)` bytes: first
    activation checkpointing on, then a smaller micro-batch (a divisor of `batch_size`, so
    `batch_size * accumulate` stays exact) with as much more gradient accumulation.
    `tokens_for(b)`: tokens of the largest micro-batch of b rows. A key in `explicit` (set by
    the user) is never changed; `may_*` False rules a change out for other reasons."""
    plan = Plan(terms(shape, setup), free, headroom, batch_size, accumulate, setup.checkpointing)
    plan.first_total = plan.total
    if plan.fits:
        return plan
    if not setup.checkpointing and may_checkpoint:
        if "model.gradient_checkpointing" in explicit:
            plan.kept.append("model.gradient_checkpointing")
        else:
            checkpointed = replace(setup, checkpointing=True)
            if estimate(shape, checkpointed) < plan.total:  # only where it saves memory
                setup = checkpointed
                plan.terms, plan.checkpointing = terms(shape, setup), True
                plan.changes["model.gradient_checkpointing"] = True
                if plan.fits:
                    return plan
    batch_keys = [
        k for k in ("data.batch_size", "trainer.accumulate_grad_batches") if k in explicit
    ]
    if batch_keys:
        plan.kept.extend(batch_keys)
        return plan
    if not may_lower_batch:
        return plan
    for b in _divisors_below(batch_size):
        plan.terms = terms(shape, replace(setup, tokens=tokens_for(b)))
        plan.batch_size, plan.accumulate = b, accumulate * (batch_size // b)
        plan.changes["data.batch_size"] = b
        plan.changes["trainer.accumulate_grad_batches"] = plan.accumulate
        if plan.fits:
            break
    return plan


def _gb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GB:.2f} GB"


def summary(plan: Plan) -> str:
    """The one log line: estimate, free memory, what changed and how to override it."""
    usable = (
        "free memory unknown"
        if plan.free is None
        else f"{_gb(plan.free)} free, {_gb(plan.budget)} usable "
        f"(train.memory.headroom={plan.headroom:g})"
    )
    head = f"memory plan: {_gb(plan.first_total)} estimated peak per step, {usable}"
    if plan.changes:
        changed = " ".join(f"{k}={str(v).lower()}" for k, v in plan.changes.items())
        overrides = ", ".join(
            f"{k}=<value>" for k in plan.changes if k != "trainer.accumulate_grad_batches"
        )
        head += (
            f"; set {changed} ({_gb(plan.total)} estimated); to keep your settings set "
            f"{overrides} or train.memory.plan=off"
        )
    if not plan.fits:
        kept = f" (kept as you set: {', '.join(plan.kept)})" if plan.kept else ""
        head += (
            f"; WILL NOT FIT{kept}: {_gb(plan.total)} estimated; lower data.max_seq_len or "
            "data.pack_length, train LoRA (model.lora.enabled=true), or use bf16 "
            "(trainer.precision=bf16-true)"
        )
    return head


def table(plan: Plan) -> str:
    """Every term, the total, the free memory and the decision (`train.memory.plan=show`)."""
    rows = [(name, _gb(v)) for name, v in plan.terms.items()]
    rows += [
        ("total (estimated peak per step)", _gb(plan.total)),
        ("free memory", _gb(plan.free)),
        (f"usable (headroom {plan.headroom:g})", _gb(plan.budget)),
        ("micro-batch x accumulation", f"{plan.batch_size} x {plan.accumulate}"),
        ("activation checkpointing", "on" if plan.checkpointing else "off"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value:>12}" for name, value in rows]
    return "\n".join([*lines, "", summary(plan)])
