"""Checks that run before any model is loaded; every problem is reported at once."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from omegaconf import DictConfig

from matrix.bad_rows import ON_ERROR
from matrix.io import jsonl_lines
from matrix.llm.embedded import EMBEDDED_PREFIX
from matrix.train.attention import CHOICES, flash_attn_available
from matrix.train.datamodule import data_path

REQUIRED_KEYS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}


class TrainConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"train config has {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _local_model_dir(spec: str) -> Path | None:
    """The folder behind model.path: a local dir, or a hub id already in the HF cache."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    if p.is_absolute() or spec.startswith((".", "~")) or spec.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec, "config.json")
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    tc = folder / "tokenizer_config.json"
    return tc.is_file() and bool(json.loads(tc.read_text()).get("chat_template"))


def check_data(cfg: DictConfig, problems: list[str]) -> None:
    path = Path(data_path(cfg))
    if not path.is_file():
        fix = cfg.data.get("generate_command")
        problems.append(
            f"data file {path} does not exist (data.path / data.{cfg.objective}_path, "
            f"data={cfg.data.name}); create it with:\n      {fix}"
            + "\n    or point data.path=... at an existing JSONL file"
        )
        return
    # The first well-formed row tells the file's kind; malformed ones are data.on_error's.
    lines = jsonl_lines(path, cfg.data.get("max_line_bytes"))
    row = next((r for _, r, err in lines if err is None and isinstance(r, dict)), None)
    if row is None:
        problems.append(f"data file {path} has no JSON object row (empty, or every line malformed)")
        return
    missing = [k for k in REQUIRED_KEYS[cfg.objective] if k not in row]
    if missing:
        problems.append(
            f"data file {path} lacks {missing} needed for objective={cfg.objective} "
            f"(SFT rows hold `messages`, DPO rows `prompt`/`chosen`/`rejected`)"
        )


def check_model(cfg: DictConfig, problems: list[str]) -> None:
    m = cfg.model
    spec = str(m.path)
    ctx = None
    if m.get("attn_implementation", "auto") not in CHOICES:
        problems.append(
            f"model.attn_implementation={m.attn_implementation!r}; choose one of {CHOICES}"
        )
    if m.get("attn_implementation") == "flash_attention_2" and not flash_attn_available():
        problems.append(
            "model.attn_implementation=flash_attention_2 but flash_attn is not installed "
            "(`pip install flash-attn --no-build-isolation`), or use model.attn_implementation=auto"
        )
    if m.get("init") == "random":
        ctx = m.config.get("max_position_embeddings")
    if not spec.startswith(EMBEDDED_PREFIX):
        folder = _local_model_dir(spec)
        if folder is None:
            problems.append(
                f"model.path={spec} is neither a local folder nor in the Hugging Face cache; "
                f"download it (`huggingface-cli download {spec}`) or set model.path=/path/to/folder"
            )
        else:
            if m.get("init") != "random" and not (folder / "config.json").is_file():
                problems.append(f"model.path={folder} has no config.json")
            if not any(
                (folder / f).is_file()
                for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
            ):
                problems.append(f"model.path={folder} has no tokenizer files (tokenizer.json)")
            elif not m.get("chat_template") and not _has_chat_template(folder):
                problems.append(
                    f"model.path={folder} has no chat template; set model.chat_template=llama3 "
                    "(the paper's choice for base models) or chatml"
                )
            if ctx is None and (folder / "config.json").is_file():
                data = json.loads((folder / "config.json").read_text())
                ctx = data.get("text_config", data).get("max_position_embeddings")
    max_len = int(cfg.data.max_seq_len)
    if ctx is not None and max_len > int(ctx):
        problems.append(
            f"data.max_seq_len={max_len} exceeds the model's context ({ctx} positions, "
            f"model={m.name}); lower data.max_seq_len"
        )
    pack = cfg.data.get("pack_length")
    if cfg.data.get("packing") and pack and ctx is not None and int(pack) > int(ctx):
        problems.append(f"data.pack_length={pack} exceeds the model's context ({ctx})")
    lora = m.get("lora") or {}
    if lora.get("quantize_4bit") and not lora.get("enabled"):
        problems.append("model.lora.quantize_4bit=true needs model.lora.enabled=true")


def check_runtime(cfg: DictConfig, problems: list[str]) -> None:
    import torch

    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(f"trainer={t.name} needs a CUDA GPU; none is visible (use trainer=cpu)")
    if cfg.optimizer.name == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            "optimizer=adamw_8bit needs bitsandbytes (`pip install bitsandbytes`, CUDA only); "
            "use optimizer=adamw"
        )
    lora = cfg.model.get("lora") or {}
    if lora.get("quantize_4bit") and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("model.lora.quantize_4bit=true (QLoRA) needs bitsandbytes")
    if cfg.objective not in ("sft", "dpo"):
        problems.append(f"objective={cfg.objective!r}; choose sft or dpo")
    if int(cfg.data.batch_size) < 1:
        problems.append("data.batch_size must be >= 1")
    if cfg.data.get("on_error", "skip") not in ON_ERROR:
        problems.append(f"data.on_error={cfg.data.on_error!r}: use skip or fail")
    mlb = cfg.data.get("max_line_bytes")
    if mlb is not None and (not isinstance(mlb, int) or mlb < 1):
        problems.append(f"data.max_line_bytes={mlb!r}: use a number of bytes >= 1, or null")
    vf = cfg.data.get("val_fraction") or 0
    if not isinstance(vf, int | float) or not 0 <= vf < 1:
        problems.append(f"data.val_fraction={vf!r}: use a share of the rows in [0, 1) (0 = none)")
    vmax = cfg.data.get("val_max_rows")
    if vmax is not None and (not isinstance(vmax, int) or vmax < 1):
        problems.append(f"data.val_max_rows={vmax!r}: use a number of rows >= 1, or null")


def preflight(cfg: DictConfig) -> None:
    """Raise TrainConfigError listing every problem found, before any expensive work."""
    problems: list[str] = []
    check_runtime(cfg, problems)
    if cfg.objective in REQUIRED_KEYS:
        check_data(cfg, problems)
    check_model(cfg, problems)
    if problems:
        raise TrainConfigError(problems)
