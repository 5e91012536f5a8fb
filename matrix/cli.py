"""What the thin stage scripts share: logging set-up and turning user errors (a bad config or
input, a full or read-only disk) into one clear message and exit code 2 instead of a
traceback."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from matrix.config_check import check_config
from matrix.io import StorageError, storage_error
from matrix.secrets import guard
from matrix.validation import ConfigError

log = logging.getLogger("matrix")

# Errors that mean "fix your config, input or disk": shown as one message, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, StorageError)


def run_stage(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    guard(cfg)  # secrets out of logs, the console and .hydra/ (also without Hydra's callback)
    try:
        # Config-wide checks (unknown keys, zero budgets, shards) before any model loads.
        check_config(cfg, fn.__name__.removeprefix("run_"))
        return fn(cfg)
    except USER_ERRORS as e:
        _fail(e)
    except OSError as e:
        # A full or read-only disk hit by a write outside matrix.io (a checkpoint, a model).
        if (err := storage_error(e)) is None:
            raise
        _fail(err)


def _fail(e: BaseException) -> None:
    log.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


class WritableRunsDir(Callback):
    """Hydra callback: stop with one message (exit 2) when paths.runs_dir is on a read-only
    disk, before Hydra tries to create its run folder there (conf/base.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if runs_dir := OmegaConf.select(config, "paths.runs_dir"):
            check_writable(runs_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_run_start(config)


def check_writable(folder: str | Path) -> None:
    """Exit 2 naming the folder and the fix if `folder` (or, while it does not exist yet, the
    nearest folder above it) cannot be written."""
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    if not os.access(path, os.W_OK):
        code = errno.EROFS if _read_only_fs(path) else errno.EACCES
        _fail(storage_error(OSError(code, os.strerror(code), str(path)), path))


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
