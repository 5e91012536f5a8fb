"""Checks that run before any model is loaded; every problem is reported at once."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from omegaconf import DictConfig

from matrix.common.columns import apply_columns
from matrix.common.tables import ACCEPTED, open_table
from matrix.common.validation import ConfigError, ConfigProblems
from matrix.llm.embedded import EMBEDDED_PREFIX, resolve_model_path
from matrix.llm.preflight import local_model_dir
from matrix.train.attention import flash_attn_available
from matrix.train.components import check_components
from matrix.train.datamodule import data_path, objective_rows
from matrix.train.examples import ROW_FIELDS, columns_problem
from matrix.train.formats import FORMATS, NATIVE
from matrix.train.loggers import check_logger
from matrix.train.source_files import Source, renamed_columns


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    tc = folder / "tokenizer_config.json"
    return tc.is_file() and bool(json.loads(tc.read_text()).get("chat_template"))


def _unread_columns(columns) -> str | None:
    """Why `data.columns` names a field the project's own rows do not have (data.format=matrix),
    or None: a published format's keys are named with that format set."""
    unknown = renamed_columns(columns, tuple(f for kind in ROW_FIELDS.values() for f in kind))
    if not unknown:
        return None
    return (
        f"{', '.join(f'data.columns.{f}' for f in unknown)}: not a field of data.format={NATIVE} "
        "rows (messages for chats; prompt, chosen, rejected for pairs); a published dataset's "
        f"keys are named with its data.format set ({', '.join(FORMATS)})"
    )


def check_data(cfg: DictConfig, p: ConfigProblems) -> None:
    spec = data_path(cfg)
    rows = objective_rows(cfg)
    source = Source.from_data(cfg.data)
    if source is not None:  # a published dataset (data.format): its own checks
        source.check(spec, rows, p, cfg.data.get("generate_command"), cfg.data.get("split"))
        return
    if why := _unread_columns(cfg.data.get("columns") or {}):
        p.add("data.columns", why)
        return
    default = "data.sft_path" if rows == "chat" else "data.dpo_path"
    if not cfg.data.get("path") and not Path(spec).exists():
        fix = cfg.data.get("generate_command")
        p.add(
            "data.path",
            f"data file {spec} does not exist ({default}, data={cfg.data.name}); create it "
            f"with:\n      {fix}\n    or point data.path=... at your own data ({ACCEPTED})",
        )
        return
    try:
        table = open_table(spec, "data.path", cfg.data.get("split"))
        columns = {
            f: c for f, c in (cfg.data.get("columns") or {}).items() if f in ROW_FIELDS[rows]
        }
        renamed = any(c != f for f, c in columns.items())
        if renamed and (why := columns_problem(table, rows, columns)):
            p.add("data.columns", why)
            return
        # The first well-formed row tells the table's kind; malformed ones are data.on_error's.
        lines = table.rows(cfg.data.get("max_line_bytes"))
        row = next((r for _, r, err in lines if err is None and isinstance(r, dict)), None)
    except ConfigError as e:
        p.add("data.path", str(e))
        return
    if row is None:
        p.add("data.path", f"data file {spec} has no row (empty, or every line malformed)")
        return
    row = apply_columns(row, columns)
    missing = [k for k in ROW_FIELDS[rows] if k not in row]
    if missing:
        p.add(
            "data.path",
            f"data file {spec} lacks {missing} needed by {cfg.train.objective._target_}, which "
            f"trains on {rows} rows (chat rows hold `messages`, pairs `prompt`/`chosen`/"
            "`rejected`; data.columns maps other column names)",
        )


def check_model(cfg: DictConfig, p: ConfigProblems) -> None:
    m = cfg.model
    spec = str(m.path)
    ctx = None
    if m.get("attn_implementation") == "flash_attention_2" and not flash_attn_available():
        p.add(
            "model.attn_implementation",
            "model.attn_implementation=flash_attention_2 but flash_attn is not installed "
            "(`pip install flash-attn --no-build-isolation`), or use model.attn_implementation=auto",
        )
    if m.get("init") == "random":
        ctx = m.config.get("max_position_embeddings")
    if spec.startswith(EMBEDDED_PREFIX) and ctx is None:
        # The embedded model's folder is converted once and cached; its config has the context.
        data = json.loads((Path(resolve_model_path(spec)) / "config.json").read_text())
        ctx = data.get("text_config", data).get("max_position_embeddings")
    if not spec.startswith(EMBEDDED_PREFIX):
        folder = local_model_dir(spec)
        if folder is None:
            p.add("model.path", _missing_model(spec))
        else:
            _check_model_folder(folder, m, p)
            if ctx is None and (folder / "config.json").is_file():
                data = json.loads((folder / "config.json").read_text())
                ctx = data.get("text_config", data).get("max_position_embeddings")
    max_len = int(cfg.data.max_seq_len)
    if ctx is not None and max_len > int(ctx):
        p.add(
            "data.max_seq_len",
            f"data.max_seq_len={max_len} exceeds the model's context ({ctx} positions, "
            f"model={m.name}); lower data.max_seq_len",
        )
    pack = cfg.data.get("pack_length")
    if cfg.data.get("packing") and pack and ctx is not None and int(pack) > int(ctx):
        p.add("data.pack_length", f"data.pack_length={pack} exceeds the model's context ({ctx})")
    lora = m.get("lora") or {}
    if lora.get("quantize_4bit") and not lora.get("enabled"):
        p.add(
            "model.lora.quantize_4bit",
            "model.lora.quantize_4bit=true needs model.lora.enabled=true",
        )


def _missing_model(spec: str) -> str:
    """What to do about a model.path that is neither a folder nor cached: a run's export is
    made by running that run (a preset that trains from another run's model names it)."""
    if Path(spec).name == "hf_model" and Path(spec).parent.name.startswith("train"):
        run = Path(spec).parents[1].name
        return (
            f"model.path={spec} does not exist yet: it is the exported model of run '{run}'; "
            f"run that first (e.g. python -m matrix.pipeline experiment={run}), or set "
            "model.path=/path/to/its/hf_model"
        )
    return (
        f"model.path={spec} is neither a local folder nor in the Hugging Face cache; "
        f"download it (`huggingface-cli download {spec}`) or set model.path=/path/to/folder"
    )


def _check_model_folder(folder: Path, m: DictConfig, p: ConfigProblems) -> None:
    """A local model folder has a config (unless initialised at random), tokenizer files and a
    chat template (or model.chat_template names one)."""
    if m.get("init") != "random" and not (folder / "config.json").is_file():
        p.add("model.path", f"model.path={folder} has no config.json")
    if not any(
        (folder / f).is_file()
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        p.add("model.path", f"model.path={folder} has no tokenizer files (tokenizer.json)")
    elif not m.get("chat_template") and not _has_chat_template(folder):
        p.add(
            "model.path",
            f"model.path={folder} has no chat template; set model.chat_template=llama3 "
            "(the paper's choice for base models) or chatml",
        )


def check_runtime(cfg: DictConfig, p: ConfigProblems) -> None:
    import torch

    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        p.add("trainer", f"trainer={t.name} needs a CUDA GPU; none is visible (use trainer=cpu)")
    lora = cfg.model.get("lora") or {}
    if lora.get("quantize_4bit") and importlib.util.find_spec("bitsandbytes") is None:
        p.add(
            "model.lora.quantize_4bit", "model.lora.quantize_4bit=true (QLoRA) needs bitsandbytes"
        )


def validate(cfg: DictConfig) -> ConfigProblems:
    """Every train problem found before any model loads (the stage registry's validator)."""
    p = ConfigProblems()
    check_runtime(cfg, p)
    check_components(cfg, p)
    if not any(k.startswith("train.objective") for k, _ in p.items):
        check_data(cfg, p)  # needs the objective's class (which rows it trains on)
    check_model(cfg, p)
    check_logger(cfg, p)
    from matrix.train.sharding import check_strategy  # imports Lightning

    check_strategy(cfg, p)
    return p
