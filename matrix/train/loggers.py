"""The train stage's Lightning logger, chosen by `logger.lightning` (conf/logger/):

    logger.lightning: {_target_: lightning.pytorch.loggers.CSVLogger, save_dir: null, name: csv}

Any Lightning `Logger` class, built with `hydra.utils.instantiate`; null: no Lightning logger.
Other stages ignore the key. Two arguments are filled in at run time:

- `experiment` for a WandbLogger: the stage's own W&B run (`StageRun.wandb_run`, opened by
  `open_stage` from `logger.wandb`), so the train stage keeps one W&B run, never a second one.
- `save_dir`, when the class takes one and the config leaves it out or null: the train stage
  folder, so `csv/` or `tensorboard/` lands next to metrics.jsonl.

What the logger receives comes from StepLogger (matrix/train/callbacks.py), the one collector
of step and validation metrics, which writes metrics.jsonl too, through the module's
`log_row` (`self.log`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from matrix.common.validation import ConfigError, ConfigProblems

KEY = "logger.lightning"
# Logger classes that need a package outside the base install: (the packages, any
# one of which does), the extra that brings one.
NEEDS: dict[type, tuple[tuple[str, ...], str]] = {
    TensorBoardLogger: (("tensorboard", "tensorboardX"), "report"),
}


class StageWandbLogger(WandbLogger):
    """Lightning's WandbLogger on the stage's own W&B run (passed as `experiment`) that logs
    each row at its optimizer step as W&B's step, as `StageRun.log` does: the training and
    validation rows of one step share it, and the steps a resumed attempt logs again are steps
    W&B already holds. (WandbLogger itself logs at W&B's running counter with the step as a
    `trainer/global_step` value; a resumed offline attempt would count from 0 again.)"""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        self.experiment.log(dict(metrics), step=step)


def configured(cfg: DictConfig) -> DictConfig | None:
    """The `logger.lightning` block, or None when no Lightning logger is chosen."""
    spec = OmegaConf.select(cfg, KEY, default=None)
    return spec if spec else None


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def logger_class(spec: DictConfig) -> type:
    module, _, name = str(spec.get("_target_") or "").rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_logger(cfg: DictConfig, p: ConfigProblems) -> None:
    """`logger.lightning` problems, found before any model loads: a class that does not import
    or is no Lightning Logger, a missing package (with the extra that installs it), an option
    its constructor does not take, a WandbLogger without the stage's W&B run."""
    from matrix.core.config_check import _check_fields

    spec = configured(cfg)
    if spec is None:
        return
    if not isinstance(spec, DictConfig) or not spec.get("_target_"):
        p.add(KEY, "name a Lightning logger class as `_target_` (or set it to null: none)")
        return
    target = str(spec._target_)
    try:
        cls = logger_class(spec)
    except (ImportError, AttributeError, ValueError) as e:
        p.add(f"{KEY}._target_", f"cannot import {target} ({e})")
        return
    if not (inspect.isclass(cls) and issubclass(cls, Logger)):
        p.add(f"{KEY}._target_", f"{target} is not a Lightning logger (lightning.pytorch.loggers)")
        return
    for base, (packages, extra) in NEEDS.items():
        if issubclass(cls, base) and not any(installed(m) for m in packages):
            p.add(
                f"{KEY}._target_",
                f"{cls.__name__} needs the `{packages[0]}` package, which is not installed: "
                f"pip install 'matrix[{extra}]' (or pip install {packages[0]})",
            )
    wandb_on = OmegaConf.select(cfg, "logger.wandb.enabled", default=False)
    if issubclass(cls, WandbLogger) and not wandb_on:
        p.add(
            f"{KEY}._target_",
            f"{target} logs to the stage's W&B run, and logger.wandb.enabled is false: set "
            "logger.wandb.enabled=true, or choose logger=csv, logger=tensorboard or logger=none",
        )
    _check_fields(OmegaConf.to_container(spec, resolve=False), cls, KEY, p)


def build_logger(cfg: DictConfig, out: Path, wandb_run: Any) -> Logger | None:
    """The configured Lightning logger for the train stage writing to `out` (None: none).
    `wandb_run`: the stage's W&B run, None on ranks other than 0 (whose loggers never log)."""
    spec = configured(cfg)
    if spec is None:
        return None
    cls = logger_class(spec)
    runtime: dict[str, Any] = {}
    if issubclass(cls, WandbLogger):
        runtime["experiment"] = wandb_run
    elif "save_dir" in inspect.signature(cls).parameters and spec.get("save_dir") is None:
        runtime["save_dir"] = str(out)
    # partial, then called: the W&B run object is passed as it is, not merged into a config
    from hydra.utils import instantiate

    factory = instantiate(spec, _partial_=True)
    try:
        return factory(**runtime)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{KEY}: {spec._target_} needs a package that is missing ({e})") from e
