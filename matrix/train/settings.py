"""The train stage's typed config schema (matrix.common.schema), checked against the composed
config before any model loads (matrix.core.value_check.check_schemas). The components
(`train.objective`, `optimizer`, `scheduler`, `train.callbacks.<name>`) are blocks typed by
their `_target_`'s own signature (matrix.train.components)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from matrix.common.schema import Count, Fraction, Natural, Range
from matrix.core.settings import Shared
from matrix.train.formats import FORMATS, NATIVE

# data.format: the project's own rows, or a published format (matrix.train.formats)
DataFormat = Literal[(NATIVE, *FORMATS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class DataColumns:
    """The table's column of each field a row needs (matrix.common.columns); with a published
    data.format, of each key of that format (matrix.train.formats: `instruction`, ...)."""

    messages: str = "messages"
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass(frozen=True)
class Data:
    """conf/data/."""

    name: str
    sft_path: str | None = None
    dpo_path: str | None = None
    path: str | None = None  # a file, save_to_disk folder or cached dataset; null: the default
    split: str | None = None  # a DatasetDict's split; null: train
    columns: DataColumns = field(default_factory=DataColumns)
    format: DataFormat = NATIVE
    sample: Count | None = None  # a seeded random sample of this many rows (after limit)
    generate_run: str | None = None
    generate_command: str | None = None
    limit: Count | None = None  # first N rows only
    on_error: Literal["skip", "fail"] = "skip"
    max_line_bytes: Count | None = None
    max_seq_len: Count = 2048
    batch_size: Count = 4  # rows per device per micro-batch
    packing: bool = True
    pack_length: Count | None = None
    shuffle: bool = True
    val_fraction: Fraction = 0.0  # [0, 1): a 1.0 holds everything out (the data module says so)
    val_max_rows: Count | None = None
    num_workers: Natural = 0

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        if block.get("val_fraction", 0) < 1:
            return []
        return [("val_fraction", "1.0 would hold every row out; use a share in [0, 1)")]


@dataclass(frozen=True)
class Lora:
    enabled: bool = False
    r: Count = 16
    alpha: float = 32
    dropout: Fraction = 0.05
    target_modules: str | list[str] = "all-linear"
    quantize_4bit: bool = False


@dataclass(frozen=True)
class Model:
    """conf/model/."""

    name: str
    path: str
    init: Literal["pretrained", "random"] = "pretrained"
    config: dict[str, Any] | None = None  # a random-init model's transformers config
    chat_template: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    attn_implementation: Literal[
        "auto", "flash_attention_2", "flex_attention", "sdpa", "sdpa_varlen", "eager"
    ] = "auto"
    gradient_checkpointing: bool = False
    compile: Literal["none", "layers"] = "none"  # torch.compile each decoder layer
    cross_entropy: Literal["chunked", "fused"] = "chunked"  # matrix.train.loss
    lora: Lora = field(default_factory=Lora)
    license: str | None = None  # the base model's licence (a Hugging Face licence id)
    license_notice: str | None = None  # text its licence requires in derived models' cards


@dataclass(frozen=True)
class Fsdp:
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"]
    activation_checkpointing: bool = True
    cpu_offload: bool = False
    state_dict_type: Literal["sharded", "full"] = "sharded"


@dataclass(frozen=True)
class Trainer:
    """conf/trainer/: Lightning Trainer settings."""

    name: str
    accelerator: Literal["cpu", "gpu", "cuda", "auto"]
    devices: int | str | list[int]  # -1: every visible GPU
    num_nodes: Count = 1
    strategy: str = "auto"
    precision: Literal["32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true"] = (
        "32-true"
    )
    max_epochs: int = 1  # -1 with max_steps: no epoch limit
    max_steps: int = -1  # > 0 stops after this many optimizer steps
    accumulate_grad_batches: Count = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: Count = 1
    val_check_interval: int | float | None = None
    check_val_every_n_epoch: Count | None = 1
    progress_bar: bool = True
    deterministic: bool = False
    release_freed_memory: bool = False
    fsdp: Fsdp | None = None


@dataclass(frozen=True)
class Checkpoint:
    enabled: bool = True
    every_n_steps: Natural = 200  # 0: only at the end
    keep: Annotated[int, Range(-1)] = 2  # newest step checkpoints kept; -1: all
    resume: str | bool | None = "auto"  # auto | null/false | a .ckpt path


@dataclass(frozen=True)
class Memory:
    """The memory plan before the first step (matrix/train/memory_fit.py)."""

    plan: Literal["auto", "show", "off"] = "auto"
    headroom: Annotated[float, Range(0, 0.9)] = 0.25  # share of free memory left unused
    limit_gb: Annotated[float, Range(0, open_min=True)] | None = (
        None  # null: the device's free memory
    )


@dataclass(frozen=True)
class Train:
    objective: Any  # a component block: checked against its _target_ (matrix.train.components)
    export: bool = True
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    memory: Memory = field(default_factory=Memory)
    callbacks: dict[str, Any] = field(default_factory=dict)  # components, as objective


@dataclass(frozen=True)
class TrainSettings(Shared):
    data: Data
    model: Model
    trainer: Trainer
    train: Train
